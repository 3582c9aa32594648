//! Which images this host is warm for, as the agent's caches say now.
//!
//! The agent remembers, per manifest digest, the distinct chunks its VMs
//! read and answers how many of them its memory or disk cache still holds
//! (`GET /v1/images`). A digest is warm when VMs read something of it and
//! at least [`WARM_PERCENT`] % of that is still on the host: the manager's
//! placer sends the image's functions here before a cold host. When the
//! agent cannot be asked, no image is warm (never a stale list).
//!
//! The report is built every second and on every sandbox change, so the
//! agent's answer is kept for [`ANSWER_TTL`]; one question is in flight at
//! a time (the others wait for its answer).

use lode_agent::control::{Client, ImageInfo};
use std::time::{Duration, Instant};

/// Share (percent) of the chunks VMs read that must still be in the host's
/// caches for the image to count as warm.
pub const WARM_PERCENT: u64 = 50;
/// How long an answer of the agent is used.
pub const ANSWER_TTL: Duration = Duration::from_secs(2);
/// Longest the agent may take to answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most digests reported (the agent remembers as many).
pub const MAX_WARM: usize = lode_agent::reads::DIGESTS_KEPT;

/// The digests of `images` that are warm: read, and at least
/// [`WARM_PERCENT`] % of what was read still resident. In the agent's order
/// (most recently used first), at most [`MAX_WARM`].
pub fn warm_digests(images: &[ImageInfo]) -> Vec<String> {
    images
        .iter()
        .filter(|i| {
            i.read_chunks > 0
                && u128::from(i.resident_chunks) * 100
                    >= u128::from(i.read_chunks) * u128::from(WARM_PERCENT)
        })
        .map(|i| i.digest.clone())
        .take(MAX_WARM)
        .collect()
}

/// The warm digests of one agent, asked at most every [`ANSWER_TTL`].
#[derive(Debug)]
pub struct WarmImages {
    agent: Client,
    // A tokio Mutex: held across the question, so one is in flight.
    last: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl WarmImages {
    /// Warm images as the agent at `agent` says.
    pub fn new(agent: Client) -> WarmImages {
        WarmImages {
            agent,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The warm digests (asks the agent when the last answer is older than
    /// [`ANSWER_TTL`]); none, with a warning, when the agent cannot answer.
    pub async fn digests(&self) -> Vec<String> {
        let mut last = self.last.lock().await;
        if let Some((at, d)) = last.as_ref() {
            if at.elapsed() < ANSWER_TTL {
                return d.clone();
            }
        }
        let answer = match tokio::time::timeout(AGENT_TIMEOUT, self.agent.images()).await {
            Ok(Ok(images)) => warm_digests(&images),
            Ok(Err(e)) => {
                tracing::warn!(agent = %self.agent.path().display(), error = %e, "cannot ask the agent which images its caches hold: reporting none");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(agent = %self.agent.path().display(), timeout = ?AGENT_TIMEOUT, "the agent did not say in time which images its caches hold: reporting none");
                Vec::new()
            }
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(n: u8, read: u64, resident: u64) -> ImageInfo {
        ImageInfo {
            digest: format!("sha256:{}", hex::encode([n; 32])),
            tenant: "t".into(),
            image: "i".into(),
            read_chunks: read,
            resident_chunks: resident,
        }
    }

    #[test]
    fn warm_means_read_and_half_still_resident() {
        let all = [
            info(1, 10, 10),
            info(2, 10, 5),
            info(3, 10, 4),
            info(4, 0, 0),
            info(5, 1, 0),
            info(6, 3, 2),
            info(7, u64::MAX, u64::MAX / 2 + 1),
        ];
        let want: Vec<String> = [1, 2, 6, 7].iter().map(|&n| info(n, 0, 0).digest).collect();
        assert_eq!(warm_digests(&all), want);
        let many: Vec<ImageInfo> = (0..=255u8).chain(0..10).map(|n| info(n, 1, 1)).collect();
        assert_eq!(warm_digests(&many).len(), MAX_WARM);
    }

    /// No agent behind the socket: nothing is warm (not a stale list).
    #[tokio::test]
    async fn an_agent_that_cannot_answer_means_no_warm_images() {
        let d = tempfile::tempdir().unwrap();
        let w = WarmImages::new(Client::new(d.path().join("none.ctl")));
        assert!(w.digests().await.is_empty());
    }
}
