//! Topic expiry racing real publishers on a multi-threaded runtime (real time): whatever the
//! interleaving of publishes and the sweeper forgetting topics, no position is ever given twice
//! and every stream (topic, epoch) has offsets 1..=n without holes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use livehub_core::Hub;
use tokio::sync::Barrier;

const PUBLISHERS: usize = 4;
const ROUNDS: usize = 10;
const PER_ROUND: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_and_expiry_never_reuse_a_position() {
    let hub = Hub::builder()
        .heartbeat(Duration::from_millis(1), Duration::from_secs(3600))
        .topic_ttl(Duration::from_millis(1))
        .build();
    let barrier = Arc::new(Barrier::new(PUBLISHERS));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (hub, barrier) = (hub.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for round in 0..ROUNDS {
                for i in 0..PER_ROUND {
                    let topic = format!("t{}", (i as usize + p) % 3);
                    let pos = hub.publish(&topic, &(round, i)).await.expect("publish");
                    got.push((topic, pos.epoch.to_string(), pos.offset));
                    if i % 16 == 0 {
                        // Let the sweeper in between publishes too.
                        tokio::task::yield_now().await;
                    }
                }
                // Then everyone stops until the sweeper has forgotten every topic: the next
                // round's publishes re-create them.
                if barrier.wait().await.is_leader() {
                    tokio::time::timeout(Duration::from_secs(10), async {
                        while hub.stats().topics > 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    })
                    .await
                    .expect("idle topics were not forgotten");
                }
                barrier.wait().await;
            }
            got
        }));
    }
    let mut streams: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for t in tasks {
        for (topic, epoch, offset) in t.await.expect("publisher") {
            streams.entry((topic, epoch)).or_default().push(offset);
        }
    }
    // Each of the 3 topics was re-created every round, in a new epoch each time.
    assert!(
        streams.len() >= 3 * ROUNDS,
        "{} streams for {ROUNDS} rounds",
        streams.len()
    );
    let mut total = 0;
    for (stream, mut offsets) in streams {
        offsets.sort_unstable();
        let n = offsets.len() as u64;
        assert_eq!(offsets, (1..=n).collect::<Vec<_>>(), "{stream:?}");
        total += offsets.len();
    }
    assert_eq!(total, PUBLISHERS * ROUNDS * PER_ROUND as usize);
}
