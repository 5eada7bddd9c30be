//! Socketless tests of the toxic math and the wire model.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::json;
use tokio::time::Instant;

use super::spec::{BandwidthAttrs, LatencyAttrs, LimitDataAttrs, SlicerAttrs, TimeoutAttrs};
use super::*;

fn cx(seed: u64) -> ToxicCx {
    ToxicCx {
        rng: SmallRng::seed_from_u64(seed),
    }
}

fn chunk(len: usize, at: Instant) -> Chunk {
    Chunk {
        data: Bytes::from(vec![7u8; len]),
        at,
    }
}

fn ms(n: i64) -> Millis {
    Millis(n * 1_000_000)
}

proptest! {
    #[test]
    fn latency_stays_within_jitter_bounds(latency in -50i64..5000, jitter in 0i64..2000, seed: u64) {
        let mut t = latency::Latency::new(&LatencyAttrs {
            latency: ms(latency), jitter: ms(jitter), ..LatencyAttrs::default()
        });
        let mut cx = cx(seed);
        for _ in 0..50 {
            let d = t.draw(0, &mut cx);
            let lo = Duration::from_millis((latency - jitter).max(0) as u64);
            let hi = Duration::from_millis((latency + jitter).max(0) as u64);
            prop_assert!(d >= lo && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
        }
    }

    #[test]
    fn slicer_pieces_cover_the_chunk_and_respect_the_size(
        len in 0usize..20_000, average in -5i64..2000, variation in 0i64..500, seed: u64,
    ) {
        let s = slicer::Slicer::new(&SlicerAttrs {
            average_size: average, size_variation: variation, delay: Micros(0),
        });
        let sizes = s.sizes(len, &mut SmallRng::seed_from_u64(seed));
        prop_assert_eq!(sizes.iter().sum::<usize>(), len);
        let cap = (average.max(1) + variation) as usize;
        for size in &sizes {
            prop_assert!(*size >= 1 && *size <= cap.max(1), "{size} > {cap}");
        }
    }

    #[test]
    fn bandwidth_releases_the_last_byte_at_bytes_over_rate(
        rate in 1i64..2_000_000, lens in prop::collection::vec(1usize..200_000, 1..8),
    ) {
        let mut t = bandwidth::Bandwidth::new(&BandwidthAttrs { rate, ..BandwidthAttrs::default() });
        let start = Instant::now();
        let mut out = Vec::new();
        for len in &lens {
            t.on_chunk(chunk(*len, start), &mut cx(0), &mut out);
        }
        let total: usize = lens.iter().sum();
        prop_assert_eq!(out.iter().map(|c| c.data.len()).sum::<usize>(), total);
        prop_assert!(out.windows(2).all(|w| w[0].at <= w[1].at));
        let want = total as f64 / (rate as f64 * 1000.0);
        let got = (out.last().unwrap().at - start).as_secs_f64();
        // Per-piece rounding to whole nanoseconds only.
        prop_assert!((got - want).abs() <= 1e-9 * out.len() as f64 + 1e-9, "{got} vs {want}");
    }

    #[test]
    fn limit_data_never_passes_more_than_the_limit(
        limit in -10i64..5000, lens in prop::collection::vec(0usize..1000, 1..20),
    ) {
        let mut t = limit_data::LimitData::new(&LimitDataAttrs { bytes: limit });
        let now = Instant::now();
        let mut out = Vec::new();
        let mut closed = false;
        for len in lens {
            if closed { break; }
            closed = matches!(t.on_chunk(chunk(len, now), &mut cx(0), &mut out), Verdict::Close(_));
        }
        let passed: usize = out.iter().map(|c| c.data.len()).sum();
        prop_assert!(passed as i64 <= limit.max(0));
        if closed {
            prop_assert_eq!(passed as i64, limit.max(0));
        }
    }
}

#[test]
fn bandwidth_zero_or_negative_is_unlimited() {
    for rate in [0, -5] {
        let mut t = bandwidth::Bandwidth::new(&BandwidthAttrs {
            rate,
            ..BandwidthAttrs::default()
        });
        let now = Instant::now();
        let mut out = Vec::new();
        t.on_chunk(chunk(1000, now), &mut cx(0), &mut out);
        assert_eq!(out, vec![chunk(1000, now)]);
    }
}

#[test]
fn bandwidth_does_not_bank_idle_time() {
    let mut t = bandwidth::Bandwidth::new(&BandwidthAttrs {
        rate: 1,
        ..BandwidthAttrs::default()
    }); // 1000 B/s
    let start = Instant::now();
    let mut out = Vec::new();
    t.on_chunk(chunk(10, start), &mut cx(0), &mut out);
    let later = start + Duration::from_secs(10);
    t.on_chunk(chunk(10, later), &mut cx(0), &mut out);
    assert_eq!(out.last().unwrap().at, later + Duration::from_millis(10));
}

#[test]
fn timeout_closes_at_its_deadline_and_zero_never() {
    let now = Instant::now();
    let mut t = timeout::Timeout::new(&TimeoutAttrs { timeout: ms(300) }, now);
    assert_eq!(t.deadline(), Some(now + Duration::from_millis(300)));
    let mut out = Vec::new();
    assert_eq!(
        t.on_chunk(chunk(5, now), &mut cx(0), &mut out),
        Verdict::Continue
    );
    assert!(out.is_empty(), "data is dropped");
    assert_eq!(t.on_deadline(now, &mut cx(0)), Verdict::Close(now));
    assert_eq!(t.deadline(), None, "a fired deadline must not stay due");
    assert!(t.closes_on_removal());
    let never = timeout::Timeout::new(&TimeoutAttrs { timeout: ms(0) }, now);
    assert_eq!(never.deadline(), None);
}

#[test]
fn reset_peer_arms_on_first_data() {
    let now = Instant::now();
    let mut t = reset_peer::ResetPeer::new(&TimeoutAttrs { timeout: ms(200) });
    assert_eq!(t.deadline(), None);
    let mut out = Vec::new();
    assert_eq!(
        t.on_chunk(chunk(5, now), &mut cx(0), &mut out),
        Verdict::Continue
    );
    assert!(out.is_empty());
    assert_eq!(t.deadline(), Some(now + Duration::from_millis(200)));
    // Later data does not move the deadline.
    t.on_chunk(
        chunk(5, now + Duration::from_millis(50)),
        &mut cx(0),
        &mut out,
    );
    assert_eq!(t.deadline(), Some(now + Duration::from_millis(200)));
    let at = t.deadline().unwrap();
    assert_eq!(t.on_deadline(at, &mut cx(0)), Verdict::Reset(at));
    assert_eq!(t.deadline(), None, "a fired deadline must not stay due");
    let mut immediate = reset_peer::ResetPeer::new(&TimeoutAttrs { timeout: ms(0) });
    assert_eq!(
        immediate.on_chunk(chunk(1, now), &mut cx(0), &mut out),
        Verdict::Reset(now)
    );
}

#[test]
fn slow_close_moves_the_fin() {
    let now = Instant::now();
    let mut t = slow_close::SlowClose::new(&super::spec::SlowCloseAttrs { delay: ms(250) });
    let mut at = now;
    assert_eq!(t.on_eof(&mut at, &mut cx(0)), Verdict::Continue);
    assert_eq!(at, now + Duration::from_millis(250));
}

#[test]
fn limit_data_keeps_its_count_across_updates() {
    let now = Instant::now();
    let mut t = limit_data::LimitData::new(&LimitDataAttrs { bytes: 10 });
    let mut out = Vec::new();
    t.on_chunk(chunk(6, now), &mut cx(0), &mut out);
    assert!(t.reconfigure(&ToxicKind::LimitData(LimitDataAttrs { bytes: 8 })));
    assert_eq!(
        t.on_chunk(chunk(6, now), &mut cx(0), &mut out),
        Verdict::Close(now)
    );
    assert_eq!(out.iter().map(|c| c.data.len()).sum::<usize>(), 8);
}

#[test]
fn patch_merges_attributes_case_insensitively_and_keeps_on_error() {
    let spec = ToxicSpec {
        name: "l".into(),
        stream: "downstream".into(),
        direction: Direction::Downstream,
        toxicity: 1.0,
        kind: ToxicKind::decode("latency", json!({"latency": 100, "jitter": 10})).unwrap(),
        matcher: None,
        ttl: None,
        expires_at: None,
        owner: None,
    };
    let patch = ToxicPatch {
        attributes: Some(json!({"Jitter": 20, "latency": null})),
        ..ToxicPatch::default()
    };
    let new = spec.patched(&patch).unwrap();
    assert_eq!(
        new.kind,
        ToxicKind::decode("latency", json!({"latency": 100, "jitter": 20})).unwrap()
    );
    let bad = ToxicPatch {
        attributes: Some(json!({"latency": 1.5})),
        ..ToxicPatch::default()
    };
    let err = spec.patched(&bad).unwrap_err();
    assert_eq!(err.path, "attributes.latency");
}

#[test]
fn durations_show_as_whole_milliseconds_or_fractions() {
    assert_eq!(
        serde_json::to_value(Millis(250_000_000)).unwrap(),
        json!(250)
    );
    assert_eq!(serde_json::to_value(Millis(250_000)).unwrap(), json!(0.25));
    assert_eq!(serde_json::to_value(Micros(7_000)).unwrap(), json!(7));
    let m: Millis = serde_json::from_value(json!("1.5s")).unwrap();
    assert_eq!(m, Millis(1_500_000_000));
    let m: Millis = serde_json::from_value(json!(-3)).unwrap();
    assert_eq!(m.duration(), Duration::ZERO);
    assert!(serde_json::from_value::<Millis>(json!(1.5)).is_err());
    assert!(serde_json::from_value::<Millis>(json!(u64::MAX)).is_err());
}

#[test]
fn envelope_checks_stream_before_type_and_defaults_the_name() {
    let env = Envelope::from_json(json!({"TYPE": "nope", "Stream": "sideways"})).unwrap();
    assert_eq!(
        env.head().unwrap_err(),
        EnvelopeError::Stream("sideways".into())
    );
    let env = Envelope::from_json(json!({"type": "nope"})).unwrap();
    assert_eq!(env.head().unwrap_err(), EnvelopeError::Type("nope".into()));
    let env = Envelope::from_json(json!({"type": "slicer", "stream": "UpStream"})).unwrap();
    let head = env.head().unwrap();
    assert_eq!(
        (head.name.as_str(), head.direction),
        ("slicer_UpStream", Direction::Upstream)
    );
    assert!(Envelope::from_json(json!([1])).is_err());
    assert!(Envelope::from_json(json!({"toxicity": "1"})).is_err());
}

#[test]
fn seeded_links_replay_the_same_draws() {
    use std::sync::Arc;

    use rand::Rng;

    use crate::proxy::{Link, Settings};
    let settings = Arc::new(Settings {
        seed: Some(42),
        ..Settings::default()
    });
    let a = Link::new(
        "db",
        "127.0.0.1:1",
        crate::proxy::Protocol::Tcp,
        settings.clone(),
    );
    let b = Link::new("db", "127.0.0.1:1", crate::proxy::Protocol::Tcp, settings);
    let draw = |l: &Link, conn, dir| l.rng(conn, dir).random::<u64>();
    assert_eq!(
        draw(&a, 1, Direction::Upstream),
        draw(&b, 1, Direction::Upstream)
    );
    assert_ne!(
        draw(&a, 1, Direction::Upstream),
        draw(&a, 2, Direction::Upstream)
    );
    assert_ne!(
        draw(&a, 1, Direction::Upstream),
        draw(&a, 1, Direction::Downstream)
    );
}

#[test]
fn bandwidth_burst_lets_a_bucketful_through_after_idling() {
    let attrs = BandwidthAttrs {
        rate: 1,
        burst: Some(100),
        ..BandwidthAttrs::default()
    }; // 1000 B/s
    let mut t = bandwidth::Bandwidth::new(&attrs);
    let start = Instant::now();
    let mut out = Vec::new();
    // 100 bytes go at once, the next 10 take 10 ms.
    t.on_chunk(chunk(110, start), &mut cx(0), &mut out);
    let first_100: usize = out
        .iter()
        .filter(|c| c.at == start)
        .map(|c| c.data.len())
        .sum();
    assert_eq!(first_100, 100);
    assert_eq!(out.last().unwrap().at, start + Duration::from_millis(10));
}

#[test]
fn shared_bandwidth_splits_the_rate_between_busy_connections() {
    let kind = ToxicKind::decode("bandwidth", json!({"rate": 100, "shared": true})).unwrap();
    let start = Instant::now();
    let mut a = kind.instantiate(start, Direction::Downstream, &mut cx(0));
    let mut b = kind.instantiate(start, Direction::Downstream, &mut cx(0));
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    // Alone: the whole 100 KB/s, 1000 bytes in 10 ms.
    a.on_chunk(chunk(1000, start), &mut cx(0), &mut oa);
    assert_eq!(oa.last().unwrap().at, start + Duration::from_millis(10));
    // Both busy: each gets half, 1000 bytes in 20 ms.
    let t1 = start + Duration::from_millis(1);
    b.on_chunk(chunk(1000, t1), &mut cx(0), &mut ob);
    assert_eq!(ob.last().unwrap().at, t1 + Duration::from_millis(20));
    // A connection that went away no longer counts.
    drop(a);
    let t2 = start + Duration::from_millis(100);
    b.on_chunk(chunk(1000, t2), &mut cx(0), &mut ob);
    assert_eq!(ob.last().unwrap().at, t2 + Duration::from_millis(10));
    // Unshared toxics do not share.
    let solo = ToxicKind::decode("bandwidth", json!({"rate": 100})).unwrap();
    let (mut c, mut d) = (
        solo.instantiate(start, Direction::Downstream, &mut cx(0)),
        solo.instantiate(start, Direction::Downstream, &mut cx(0)),
    );
    let (mut oc, mut od) = (Vec::new(), Vec::new());
    c.on_chunk(chunk(1000, start), &mut cx(0), &mut oc);
    d.on_chunk(chunk(1000, start), &mut cx(0), &mut od);
    assert_eq!(od.last().unwrap().at, start + Duration::from_millis(10));
}

#[test]
fn bandwidth_rejects_a_negative_burst() {
    let err = ToxicKind::decode("bandwidth", json!({"rate": 10, "burst": -1})).unwrap_err();
    assert_eq!(err.path, "attributes.burst");
}

#[test]
fn profiles_resolve_and_refuse_unknown_names_and_bad_weights() {
    for p in profile::PROFILES {
        assert!(
            ToxicKind::decode("profile", json!({"name": p.name})).is_ok(),
            "{}",
            p.name
        );
    }
    let cases = [
        (json!({"name": "5g"}), "attributes.name", "unknown profile"),
        (json!({}), "attributes.name", "required"),
        (
            json!({"name": "lte", "mix": {"lte": 1}}),
            "attributes.mix",
            "not both",
        ),
        (json!({"mix": {}}), "attributes.mix", "at least one"),
        (
            json!({"mix": {"lte": 0}}),
            "attributes.mix.lte",
            "greater than 0",
        ),
        (
            json!({"mix": {"lte": 1, "dialup": 1}}),
            "attributes.mix.dialup",
            "unknown profile",
        ),
    ];
    for (attrs, path, needle) in cases {
        let err = ToxicKind::decode("profile", attrs.clone()).unwrap_err();
        assert_eq!(err.path, path, "{attrs}");
        assert!(err.message.contains(needle), "{attrs}: {}", err.message);
    }
}

#[test]
fn a_mix_assigns_profiles_in_proportion() {
    let ToxicKind::Profile(attrs) =
        ToxicKind::decode("profile", json!({"mix": {"lte": 0.7, "3g": 0.3}})).unwrap()
    else {
        panic!()
    };
    let mut cx = cx(5);
    let lte = (0..2000)
        .filter(|_| {
            profile::ProfileToxic::new(&attrs, Direction::Downstream, &mut cx).profile == "lte"
        })
        .count();
    assert!((1330..=1470).contains(&lte), "{lte} of 2000 drew lte");
}

#[test]
fn a_profile_paces_at_its_rate_and_delays_by_its_path_latency() {
    let ToxicKind::Profile(attrs) =
        ToxicKind::decode("profile", json!({"name": "satellite"})).unwrap()
    else {
        panic!()
    };
    let start = Instant::now();
    let mut t = profile::ProfileToxic::new(&attrs, Direction::Upstream, &mut cx(3));
    let mut out = Vec::new();
    t.on_chunk(chunk(4230, start), &mut cx(3), &mut out);
    // 4230 bytes at the 423 KB/s uplink take 10 ms, then at least the 239 ms GEO floor.
    let last = out.last().unwrap().at - start;
    assert!(last >= Duration::from_millis(249), "{last:?}");
    assert!(last < Duration::from_millis(2000), "{last:?}");
}

/// `wifi-lossy` loses 10 % of its segments: a one-segment chunk that is lost is a tail loss and
/// waits an RTO (its round trip + 200 ms) on top of the path latency; the others do not.
#[test]
fn a_lossy_profile_charges_recovery_to_about_its_loss_rate() {
    let ToxicKind::Profile(attrs) =
        ToxicKind::decode("profile", json!({"name": "wifi-lossy"})).unwrap()
    else {
        panic!()
    };
    let mut cx = cx(11);
    let start = Instant::now();
    let mut t = profile::ProfileToxic::new(&attrs, Direction::Downstream, &mut cx);
    let n = 4000;
    let waits: Vec<Duration> = (0..n)
        .map(|i| {
            // 100 bytes every 10 ms: the link is never the bottleneck.
            let at = start + Duration::from_millis(10 * i);
            let mut out = Vec::new();
            t.on_chunk(chunk(100, at), &mut cx, &mut out);
            assert_eq!(out.len(), 1);
            out[0].at - at
        })
        .collect();
    let path = *waits.iter().min().unwrap();
    let late = waits
        .iter()
        .filter(|w| **w >= path + Duration::from_millis(200))
        .count();
    let share = late as f64 / n as f64;
    assert!((0.08..0.12).contains(&share), "{share}");
}
