//! Issue 11's replicas: a three-node JetStream cluster with every stream
//! at three replicas losing a node while services die too, and a rolling
//! restart (SIGTERM, with the drain) of every service while writers write.

use crate::load::{LIVE_SHARE, Load};
use crate::system::{Dependency, SERVICES, System};
use crate::{Recoveries, run_for};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_nats_cluster_and_replicas_killed_in_turn_lose_and_reorder_nothing() {
    let mut system = System::start(3).await;
    let load = Load::start(&system, 1, 4).await;
    let mut recoveries = Recoveries::default();
    run_for(Duration::from_secs(2)).await;
    system.kill_dependency(Dependency::Nats, 0);
    run_for(Duration::from_secs(2)).await;
    let back = system.restart_dependency(Dependency::Nats, 0);
    recoveries.measure(&load, "SIGKILL NATS node 0", back).await;
    run_for(Duration::from_secs(1)).await;
    for name in ["push-1", "message-1", "gateway-1"] {
        system.kill(name);
        run_for(Duration::from_secs(1)).await;
        let back = system.restart(name).await;
        recoveries
            .measure(&load, format!("SIGKILL {name}"), back)
            .await;
        run_for(Duration::from_secs(1)).await;
    }
    run_for(Duration::from_secs(2)).await;
    let report = load.finish().await;

    report.print("3-node NATS cluster: a node, push, message, gateway killed");
    recoveries.print();
    report.assert_exact();
    assert_eq!(report.out_of_order(), 0, "live deliveries out of order");
    assert!(report.live_share() >= LIVE_SHARE, "live share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_nothing_and_shows_nothing_twice() {
    let mut system = System::start(1).await;
    let load = Load::start(&system, 2, 2).await;
    run_for(Duration::from_secs(2)).await;
    let mut stops = Vec::new();
    for name in SERVICES {
        let took = system.terminate(name);
        system.restart(name).await;
        stops.push(format!("{name} {took:.1?}"));
        run_for(Duration::from_secs(1)).await;
    }
    run_for(Duration::from_secs(2)).await;
    let report = load.finish().await;

    report.print("rolling restart (SIGTERM) of every service");
    println!("faults:   shutdowns: {}", stops.join(", "));
    println!(
        "faults:   longest writer pause {:.2?}",
        report.longest_stall()
    );
    report.assert_exact();
}
