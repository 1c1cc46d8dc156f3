//! The poll_demo example's feed: its matches differ from each other (their clock, their
//! teams, their scores over a game), no team plays two matches at once, and a finished match
//! is replaced by a new pairing. The example's own code is compiled into this test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // `main` and the server are for the example binary only.
#[path = "../examples/poll_demo.rs"]
mod example;

use std::collections::HashSet;

use example::{advance, kick_off, playing, Rng};

fn distinct(teams: &[&str]) -> bool {
    teams.iter().collect::<HashSet<_>>().len() == teams.len()
}

#[test]
fn the_matches_differ_and_no_team_plays_twice_at_once() {
    for seed in [1u64, 7, 42, 0x9e37_79b9_7f4a_7c15] {
        let mut rng = Rng(seed | 1);
        let mut matches = kick_off(&mut rng);
        let minutes: Vec<u32> = matches.iter().map(|m| m.minute).collect();
        assert_eq!(
            minutes,
            [0, 31, 62],
            "staggered kick-offs: the clocks differ"
        );
        assert!(
            distinct(&playing(&matches)),
            "seed {seed}: six different teams"
        );

        // Ten simulated games' worth of minutes: every state published is of a match in play,
        // and at every step the teams on the board are all different.
        let mut scores = HashSet::new();
        let mut pairings = HashSet::new();
        for _ in 0..1000 {
            for i in 0..matches.len() {
                if let Some(state) = advance(&mut matches, i, &mut rng) {
                    assert_eq!(state["id"], matches[i].id);
                    assert!(state["minute"].as_u64().unwrap() <= 90);
                    scores.insert((state["home_score"].clone(), state["away_score"].clone()));
                }
                assert!(
                    distinct(&playing(&matches)),
                    "seed {seed}: a team in two matches"
                );
                pairings.insert((matches[i].home, matches[i].away));
            }
        }
        assert!(
            pairings.len() > 3,
            "seed {seed}: finished matches are replaced by new pairings"
        );
        assert!(
            scores.len() > 3,
            "seed {seed}: the scores vary ({scores:?})"
        );
    }
}
