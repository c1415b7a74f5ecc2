//! Issue 9's faults: each natter process crashes and comes back, and each
//! dependency goes away and returns, one at a time, under load.

use crate::load::{LIVE_SHARE, Load};
use crate::system::{Dependency, SERVICES, System};
use crate::{BACK_TO_LIVE, Recoveries, run_for};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_natter_process_killed_and_restarted_in_turn_loses_nothing_and_stays_live() {
    let mut system = System::start(1).await;
    let load = Load::start(&system, 1, 4).await;
    let mut recoveries = Recoveries::default();
    run_for(Duration::from_secs(2)).await;
    for name in SERVICES {
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

    report.print(&format!("{} natter processes killed", SERVICES.len()));
    recoveries.print();
    println!(
        "faults:   {} processes exited on their own",
        system.respawns
    );
    report.assert_exact();
    assert!(report.live_share() >= LIVE_SHARE, "live share");
    assert_eq!(system.respawns, 0, "every process recovered on its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_postgres_and_redis_outages_lose_nothing_and_delivery_is_live_again_within_5s() {
    let mut system = System::start(1).await;
    let load = Load::start(&system, 1, 4).await;
    let mut recoveries = Recoveries::default();
    run_for(Duration::from_secs(2)).await;
    // Who must say so on /readyz while each is gone.
    let outages = [
        (
            Dependency::Nats,
            Duration::from_secs(3),
            ["gateway-1", "push-1"],
        ),
        (
            Dependency::Postgres,
            Duration::from_secs(3),
            ["message-1", "push-2"],
        ),
        (
            Dependency::Redis,
            Duration::from_secs(25),
            ["push-1", "gateway-2"],
        ),
    ];
    for (dependency, down, watchers) in outages {
        let killed = Instant::now();
        system.kill_dependency(dependency, 0);
        for watcher in watchers {
            assert!(
                system.turns_unready(watcher, Duration::from_secs(10)).await,
                "{watcher} stays ready without {dependency:?}"
            );
        }
        tokio::time::sleep_until((killed + down).into()).await;
        let gone = killed.elapsed();
        let back = system.restart_dependency(dependency, 0);
        recoveries
            .measure(&load, format!("{dependency:?} down {gone:.1?}"), back)
            .await;
        system.wait_all_ready().await;
        run_for(Duration::from_secs(1)).await;
    }
    run_for(Duration::from_secs(2)).await;
    let report = load.finish().await;

    report.print("NATS, Postgres, Redis killed in turn");
    recoveries.print();
    println!(
        "faults:   {} processes exited on their own",
        system.respawns
    );
    report.assert_exact();
    assert!(report.live_share() >= LIVE_SHARE, "live share");
    assert_eq!(system.respawns, 0, "every process recovered on its own");
    recoveries.assert_within(BACK_TO_LIVE);
}
