//! natter services as `natter-server` child processes, for what only a
//! process can show: a SIGSTOPped or SIGKILLed node.

use natter_platform::Config;
use natter_testkit::private::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `natter-server <target>` on `config`; killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens (its API, or health only).
    pub port: u16,
}

impl ServerProcess {
    /// Starts `target` (`gateway` or `message`) on `config`, on a free
    /// port, and waits until `/readyz` says ready.
    pub async fn start(target: &str, config: &Config) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let addr_var = match target {
            "gateway" => "NATTER_GATEWAY_ADDR",
            "message" => "NATTER_MESSAGE_ADDR",
            other => panic!("no process helper for {other}"),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_natter-server"));
        command
            .arg(target)
            .env("NATTER_DATABASE_URL", &config.database_url)
            .env("NATTER_DATABASE_POOL", "3")
            .env("NATTER_NATS_URL", &config.nats_url)
            .env("NATTER_REDIS_URL", &config.redis_url)
            .env("NATTER_NAMESPACE", &config.namespace)
            .env(
                "NATTER_EVENTS_MAX_BYTES",
                config.events_max_bytes.to_string(),
            )
            .env("NATTER_GATEWAY_ID", config.gateway_id())
            .env(addr_var, &addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(secret) = &config.jwt_secret {
            command.env("NATTER_JWT_SECRET", secret.expose());
        }
        if let Some(key) = &config.bus_key {
            command.env("NATTER_BUS_KEY", key.expose());
        }
        let server = Self {
            child: command.spawn().expect("natter-server starts"),
            port,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "{url} never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends it `signal` (`-STOP`, `-KILL`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
