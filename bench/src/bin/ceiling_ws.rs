//! `natter-ceiling-ws`: the bare tokio-tungstenite broadcast server natter's
//! gateway is measured against (bench/run). Every text frame any socket
//! sends goes to every socket, through one `tokio::sync::broadcast`
//! channel; no auth, no routing, no storage: what a WebSocket fan-out
//! costs on this machine with nothing else. It writes the way a careful
//! server would: everything already queued for a socket, then one flush
//! (one write); and with the gateway's buffer sizes (tungstenite's default
//! read buffer, 128 KiB, would make the memory comparison meaningless).

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Frames a slow socket may fall behind before it skips some.
const QUEUE: usize = 4096;
/// The gateway's read and write buffers (services/gateway/src/upgrade.rs).
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 8 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18190".to_owned());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind(&addr).await?;
    let (tx, _) = broadcast::channel::<Utf8Bytes>(QUEUE);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = serve(stream, tx).await;
        });
    }
}

async fn serve(stream: TcpStream, tx: broadcast::Sender<Utf8Bytes>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let _ = tx.send(text);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(()),
                Some(Ok(_)) => {}
            },
            frame = rx.recv() => {
                match frame {
                    Ok(text) => sink.feed(Message::Text(text)).await?,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return Ok(()),
                }
                loop {
                    match rx.try_recv() {
                        Ok(text) => sink.feed(Message::Text(text)).await?,
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                sink.flush().await?;
            }
        }
    }
}
