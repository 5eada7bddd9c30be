//! `loss`: what a lost TCP segment costs, as delay.
//!
//! A user-space proxy terminates two TCP connections; it cannot drop a segment without
//! corrupting the stream. So `loss` charges the delay the kernel would pay to recover:
//! - Each chunk is cut into segments of `mss` bytes, and each segment is drawn lost or not:
//!   independently (`rate`, Bernoulli) or in bursts (Gilbert-Elliott: `p` good→bad, `r`
//!   bad→good, `loss_good` and `loss_bad` the loss chances in each state).
//! - A lost segment followed by at least three more in the same chunk is fast-retransmitted
//!   (three duplicate ACKs): it costs one `rtt`. Fewer than three behind it (a tail loss) waits
//!   for the retransmission timeout, RTO = `rtt` + `rto_min` (Linux's floor is 200 ms).
//! - A retransmission can be lost too: each further loss of the same segment costs the RTO,
//!   doubled every time (exponential back-off). After [`MAX_RETRIES`] the connection is reset,
//!   as the kernel gives up (`tcp_retries2`).
//! - The bytes before the first lost segment go at once; the rest wait for the longest
//!   recovery in the chunk (later chunks wait behind them: head-of-line blocking).
//! - A lost SYN (the same draw, at connect) delays the dial by 1 s, then 3 s, 7 s, ... (an
//!   initial RTO of 1 s, doubling): see [`LossModel::syn_delay`].

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use super::spec::{AttrError, Millis};
use super::{Chunk, Toxic, ToxicCx, ToxicKind, Verdict};

/// Retransmissions of one segment before the connection is reset.
pub const MAX_RETRIES: u32 = 15;
/// Defaults of the path being modelled.
pub const DEFAULT_RTT: Duration = Duration::from_millis(50);
/// Linux's minimum retransmission timeout.
pub const DEFAULT_RTO_MIN: Duration = Duration::from_millis(200);
/// Ethernet's MSS with TCP timestamps.
pub const DEFAULT_MSS: usize = 1448;
/// The SYN's initial retransmission timeout (RFC 6298).
const SYN_RTO: Duration = Duration::from_secs(1);
/// SYN tries: the first and Linux's six retries (`tcp_syn_retries`).
const SYN_TRIES: u32 = 7;
/// How long connect() takes to give up when every SYN is lost: 1 + 2 + ... + 64 s.
pub const SYN_GIVE_UP: Duration = Duration::from_secs((1 << SYN_TRIES) - 1);

/// How segments are lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossProcess {
    /// Each segment independently, with this chance.
    Bernoulli(f64),
    /// A two-state Markov chain per connection and direction.
    GilbertElliott {
        /// Chance per segment of going from the good state to the bad one.
        p: f64,
        /// Chance per segment of going from the bad state back to the good one.
        r: f64,
        /// Loss chance in the good state.
        loss_good: f64,
        /// Loss chance in the bad state.
        loss_bad: f64,
    },
}

impl LossProcess {
    /// Reads `rate`, or `p`, `r`, `loss_good` and `loss_bad` (shared by `loss` and UDP's
    /// `packet_loss`); every error names the attribute.
    pub fn build(
        rate: Option<f64>,
        p: Option<f64>,
        r: Option<f64>,
        loss_good: Option<f64>,
        loss_bad: Option<f64>,
    ) -> Result<LossProcess, AttrError> {
        let chance = |v: Option<f64>, name: &str| -> Result<Option<f64>, AttrError> {
            match v {
                Some(x) if !(0.0..=1.0).contains(&x) || x.is_nan() => Err(AttrError::attribute(
                    name,
                    format!("must be a probability between 0 and 1, got {x}"),
                )),
                other => Ok(other),
            }
        };
        let rate = chance(rate, "rate")?;
        let (p, r) = (chance(p, "p")?, chance(r, "r")?);
        let (loss_good, loss_bad) = (
            chance(loss_good, "loss_good")?,
            chance(loss_bad, "loss_bad")?,
        );
        Ok(match (rate, p, r) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(AttrError::attribute(
                    "rate",
                    "give either rate (independent losses) or p and r (Gilbert-Elliott bursts), not both",
                ));
            }
            (Some(rate), None, None) => {
                if loss_good.is_some() || loss_bad.is_some() {
                    return Err(AttrError::attribute(
                        if loss_good.is_some() {
                            "loss_good"
                        } else {
                            "loss_bad"
                        },
                        "belongs to the Gilbert-Elliott model (p and r); with rate, every segment has the same chance",
                    ));
                }
                LossProcess::Bernoulli(rate)
            }
            (None, Some(p), Some(r)) => {
                if p > 0.0 && r == 0.0 && loss_bad.unwrap_or(1.0) > 0.0 {
                    return Err(AttrError::attribute(
                        "r",
                        "must be above 0: with r = 0 the bad state never ends and every segment is lost from then on",
                    ));
                }
                LossProcess::GilbertElliott {
                    p,
                    r,
                    loss_good: loss_good.unwrap_or(0.0),
                    loss_bad: loss_bad.unwrap_or(1.0),
                }
            }
            (None, Some(_), None) => return Err(AttrError::attribute("r", "required with p")),
            (None, None, Some(_)) => return Err(AttrError::attribute("p", "required with r")),
            (None, None, None) => {
                return Err(AttrError::attribute(
                    "rate",
                    "required: a chance per segment (0..1), or p and r for bursts",
                ));
            }
        })
    }

    /// Draws whether the next segment (or datagram) is lost, moving the state.
    pub fn lost(&self, state: &mut LossState, rng: &mut impl Rng) -> bool {
        match *self {
            LossProcess::Bernoulli(rate) => rate > 0.0 && rng.random::<f64>() < rate,
            LossProcess::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                // Move first, then draw in the new state: a burst starts with its first loss.
                let flip = if state.bad { r } else { p };
                if rng.random::<f64>() < flip {
                    state.bad = !state.bad;
                }
                let chance = if state.bad { loss_bad } else { loss_good };
                chance > 0.0 && rng.random::<f64>() < chance
            }
        }
    }
}

/// Validated `loss` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LossModel {
    /// The loss process.
    pub process: LossProcess,
    /// The modelled round trip.
    pub rtt: Duration,
    /// The floor of the retransmission timeout.
    pub rto_min: Duration,
    /// Segment size.
    pub mss: usize,
}

/// The loss process's state on one connection and direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct LossState {
    bad: bool,
}

impl LossModel {
    /// Checks the attributes; every error names the attribute.
    pub fn build(a: &super::spec::LossAttrs) -> Result<LossModel, AttrError> {
        let process = LossProcess::build(a.rate, a.p, a.r, a.loss_good, a.loss_bad)?;
        let duration = |v: Option<Millis>, name: &str, default: Duration| match v {
            Some(m) if m.0 < 0 => Err(AttrError::attribute(
                name,
                format!("must not be negative, got {}ms", m.as_ms()),
            )),
            Some(m) => Ok(m.duration()),
            None => Ok(default),
        };
        let mss = match a.mss {
            None => DEFAULT_MSS,
            Some(m) if (64..=65_535).contains(&m) => m as usize,
            Some(m) => {
                return Err(AttrError::attribute(
                    "mss",
                    format!("must be 64 to 65535 bytes, got {m}"),
                ));
            }
        };
        Ok(LossModel {
            process,
            rtt: duration(a.rtt, "rtt", DEFAULT_RTT)?,
            rto_min: duration(a.rto_min, "rto_min", DEFAULT_RTO_MIN)?,
            mss,
        })
    }

    /// The retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt + self.rto_min
    }

    /// Draws whether the next segment is lost, moving the state.
    pub fn lost(&self, state: &mut LossState, rng: &mut impl Rng) -> bool {
        self.process.lost(state, rng)
    }

    /// What recovering one segment costs: nothing, or the first recovery (a fast retransmit's
    /// RTT or a tail loss's RTO) plus doubling RTOs for each lost retransmission. `None` when
    /// the kernel would give up.
    pub fn recovery(
        &self,
        tail: bool,
        state: &mut LossState,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if !self.lost(state, rng) {
            return Some(Duration::ZERO);
        }
        let rto = self.rto();
        let mut cost = if tail { rto } else { self.rtt };
        let mut backoff = if tail { rto * 2 } else { rto };
        for _ in 0..MAX_RETRIES {
            if !self.lost(state, rng) {
                return Some(cost);
            }
            cost += backoff;
            backoff *= 2;
        }
        None
    }

    /// The dial's delay for lost SYNs: 0, 1 s, 3 s, 7 s, ... `None` when every try is lost.
    pub fn syn_delay(&self, rng: &mut impl Rng) -> Option<Duration> {
        let mut state = LossState::default();
        let mut delay = Duration::ZERO;
        let mut rto = SYN_RTO;
        for _ in 0..SYN_TRIES {
            if !self.lost(&mut state, rng) {
                return Some(delay);
            }
            delay += rto;
            rto *= 2;
        }
        None
    }
}

/// The runtime toxic of one connection and direction.
#[derive(Debug)]
pub(super) struct Loss {
    model: std::sync::Arc<LossModel>,
    state: LossState,
}

impl Loss {
    pub(super) fn new(model: std::sync::Arc<LossModel>) -> Loss {
        Loss {
            model,
            state: LossState::default(),
        }
    }
}

impl Toxic for Loss {
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        let len = chunk.data.len();
        let segments = len.div_ceil(self.model.mss).max(1);
        let mut first_lost = None;
        let mut delay = Duration::ZERO;
        for i in 0..segments {
            // Fewer than three segments behind it: no duplicate ACKs, a timeout.
            let tail = segments - i <= 3;
            match self.model.recovery(tail, &mut self.state, &mut cx.rng) {
                None => return Verdict::Reset(chunk.at + delay.max(self.model.rto())),
                Some(d) if d > Duration::ZERO => {
                    first_lost.get_or_insert(i);
                    delay = delay.max(d);
                }
                Some(_) => {}
            }
        }
        match first_lost {
            None => out.push(chunk),
            Some(i) => {
                let cut = (i * self.model.mss).min(len);
                let Chunk { data, at } = chunk;
                let (head, rest): (Bytes, Bytes) = (data.slice(..cut), data.slice(cut..));
                if !head.is_empty() {
                    out.push(Chunk { data: head, at });
                }
                out.push(Chunk {
                    data: rest,
                    at: at + delay,
                });
            }
        }
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &ToxicKind) -> bool {
        match kind {
            ToxicKind::Loss(a) => match &a.model {
                Some(model) => {
                    self.model = model.clone();
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn bernoulli(rate: f64) -> LossModel {
        LossModel {
            process: LossProcess::Bernoulli(rate),
            rtt: Duration::from_millis(50),
            rto_min: Duration::from_millis(200),
            mss: 1000,
        }
    }

    /// A one-segment chunk is always a tail loss: its cost is RTO (2^k - 1) after k losses in a
    /// row, with chance p^k (1 - p). The mean is RTO p / (1 - 2p) for p < 1/2.
    #[test]
    fn tail_losses_cost_the_analytic_mean() {
        for p in [0.01, 0.1, 0.3] {
            let m = bernoulli(p);
            let mut rng = SmallRng::seed_from_u64(1);
            let mut state = LossState::default();
            let n = 200_000;
            let total: f64 = (0..n)
                .map(|_| {
                    m.recovery(true, &mut state, &mut rng)
                        .unwrap()
                        .as_secs_f64()
                })
                .sum();
            let mean = total / n as f64;
            let analytic = m.rto().as_secs_f64() * p / (1.0 - 2.0 * p);
            assert!(
                (mean - analytic).abs() / analytic < 0.05,
                "p={p}: {mean} vs {analytic}"
            );
        }
    }

    /// Not at the tail, a loss costs one RTT; a lost retransmission adds the RTO, then twice it.
    #[test]
    fn fast_retransmits_cost_a_round_trip() {
        let p = 0.05;
        let m = bernoulli(p);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut state = LossState::default();
        let n = 200_000;
        let costs: Vec<Duration> = (0..n)
            .map(|_| m.recovery(false, &mut state, &mut rng).unwrap())
            .collect();
        let lost = costs.iter().filter(|c| !c.is_zero()).count() as f64 / n as f64;
        assert!((lost - p).abs() < 0.003, "{lost}");
        let once = costs.iter().filter(|c| **c == m.rtt).count() as f64 / n as f64;
        assert!((once - p * (1.0 - p)).abs() < 0.003, "{once}");
        let twice = costs.iter().filter(|c| **c == m.rtt + m.rto()).count() as f64 / n as f64;
        assert!((twice - p * p * (1.0 - p)).abs() < 0.001, "{twice}");
    }

    #[test]
    fn a_chunk_waits_from_its_first_lost_segment_on() {
        let m = std::sync::Arc::new(bernoulli(1.0));
        let mut t = Loss::new(m);
        let mut cx = ToxicCx {
            rng: SmallRng::seed_from_u64(3),
        };
        let at = tokio::time::Instant::now();
        let mut out = Vec::new();
        // Certain loss: every try is lost, the kernel gives up.
        let v = t.on_chunk(
            Chunk {
                data: Bytes::from(vec![0u8; 5000]),
                at,
            },
            &mut cx,
            &mut out,
        );
        assert!(matches!(v, Verdict::Reset(_)));

        let mut t = Loss::new(std::sync::Arc::new(bernoulli(0.0)));
        let mut out = Vec::new();
        t.on_chunk(
            Chunk {
                data: Bytes::from(vec![1u8; 5000]),
                at,
            },
            &mut cx,
            &mut out,
        );
        assert_eq!(
            out,
            vec![Chunk {
                data: Bytes::from(vec![1u8; 5000]),
                at
            }]
        );
    }

    #[test]
    fn lost_syns_cost_one_then_three_then_seven_seconds() {
        let m = bernoulli(0.5);
        let mut rng = SmallRng::seed_from_u64(4);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..10_000 {
            if let Some(d) = m.syn_delay(&mut rng) {
                *seen.entry(d.as_secs()).or_insert(0u32) += 1;
            }
        }
        let keys: Vec<u64> = seen.keys().copied().take(4).collect();
        assert_eq!(keys, vec![0, 1, 3, 7]);
        // Half the SYNs get through at once, a quarter after one loss.
        assert!((seen[&0] as f64 / 10_000.0 - 0.5).abs() < 0.02);
        assert!((seen[&1] as f64 / 10_000.0 - 0.25).abs() < 0.02);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// With loss only in the bad state, a burst of losses lasts as long as the bad state:
        /// its mean length is 1 / r.
        #[test]
        fn gilbert_elliott_bursts_last_one_over_r(p in 0.01f64..0.2, r in 0.15f64..0.9, seed in 0u64..1000) {
            let m = LossModel {
                process: LossProcess::GilbertElliott { p, r, loss_good: 0.0, loss_bad: 1.0 },
                rtt: Duration::ZERO,
                rto_min: Duration::ZERO,
                mss: 1000,
            };
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut state = LossState::default();
            let (mut bursts, mut lost, mut in_burst) = (0u64, 0u64, false);
            for _ in 0..400_000 {
                let l = m.lost(&mut state, &mut rng);
                if l && !in_burst {
                    bursts += 1;
                }
                lost += u64::from(l);
                in_burst = l;
            }
            let mean = lost as f64 / bursts as f64;
            prop_assert!((mean - 1.0 / r).abs() / (1.0 / r) < 0.08, "mean burst {} vs 1/r {}", mean, 1.0 / r);
            // And the share of time lost is the bad state's: p / (p + r).
            let share = lost as f64 / 400_000.0;
            prop_assert!((share - p / (p + r)).abs() < 0.02 + 0.1 * p / (p + r), "share {}", share);
        }
    }
}
