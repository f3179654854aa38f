//! Isolating the bad events of a rejected batch: destinations that refuse a whole request
//! for one bad event (Meta, TikTok) answer [`BatchAnswer::Poisoned`], and [`send_isolating`]
//! splits the batch in halves until each offender stands alone, so its neighbours are
//! delivered and only it is dead-lettered.

use std::future::Future;

use crate::{Failure, Outcome};

/// How one request went, for the whole batch it carried.
#[derive(Debug)]
pub enum BatchAnswer {
    /// Taken; the destination's reference for the request (trace or request id).
    Accepted(Option<String>),
    /// Every event in it gets this outcome.
    All(Outcome),
    /// Refused because of (at least) one bad event: split it to find it.
    Poisoned(Failure),
}

/// Posts `events` with `post`, bisecting poisoned batches; one outcome per event, in order.
/// Halves go out one after the other, left first, so a destination sees at most
/// `2 × log2(n)` extra requests per bad event.
pub async fn send_isolating<'a, T, F, Fut>(events: &'a [T], mut post: F) -> Vec<Outcome>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: Future<Output = BatchAnswer>,
{
    let mut out: Vec<Option<Outcome>> = vec![None; events.len()];
    // Ranges still to post, the next one on top.
    let mut todo = vec![(0, events.len())];
    while let Some((start, end)) = todo.pop() {
        if start == end {
            continue;
        }
        let outcome = match post(&events[start..end]).await {
            BatchAnswer::Accepted(reference) => Outcome::Sent {
                reference,
                http_status: Some(200),
            },
            BatchAnswer::All(outcome) => outcome,
            BatchAnswer::Poisoned(failure) if end - start == 1 => Outcome::Permanent(failure),
            BatchAnswer::Poisoned(_) => {
                let mid = start + (end - start) / 2;
                todo.push((mid, end));
                todo.push((start, mid));
                continue;
            }
        };
        for slot in &mut out[start..end] {
            *slot = Some(outcome.clone());
        }
    }
    out.into_iter()
        .map(|o| o.expect("every range is decided"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn the_bad_events_stand_alone_and_their_neighbours_are_sent() {
        let events: Vec<u32> = (0..8).collect();
        let posts = Mutex::new(Vec::new());
        let out = send_isolating(&events, |batch: &[u32]| {
            posts.lock().unwrap().push(batch.to_vec());
            let bad = batch.iter().any(|&e| e == 2 || e == 5);
            async move {
                if bad {
                    BatchAnswer::Poisoned(Failure::new("x_400", "bad"))
                } else {
                    BatchAnswer::Accepted(Some("R".into()))
                }
            }
        })
        .await;
        let kinds: Vec<&str> = out
            .iter()
            .map(|o| match o {
                Outcome::Sent { .. } => "sent",
                Outcome::Permanent(_) => "dead",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "sent", "sent", "dead", "sent", "sent", "dead", "sent", "sent"
            ]
        );
        let posts = posts.into_inner().unwrap();
        assert_eq!(posts[0], events);
        assert_eq!(posts[1], [0, 1, 2, 3], "left half first");
        assert!(posts.len() <= 1 + 2 * 2 * 3, "{} posts", posts.len());
    }

    #[tokio::test]
    async fn an_answer_for_all_is_given_to_all() {
        let events = [1, 2, 3];
        let out = send_isolating(&events, |_: &[i32]| async {
            BatchAnswer::All(Outcome::Systemic(Failure::new("auth", "refused")))
        })
        .await;
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| matches!(o, Outcome::Systemic(_))));
        assert!(
            send_isolating(&[] as &[i32], |_| async { unreachable!() })
                .await
                .is_empty()
        );
    }
}
