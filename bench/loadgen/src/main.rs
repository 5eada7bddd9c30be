//! loadgen: upstream servers and load clients for fallacy's end-to-end benchmark.
//!
//! Every role is a subcommand. Servers print one JSON line with the address they bound, then
//! serve until `--duration` runs out. Clients print one JSON line with their result. Every
//! process also has a hard deadline (a watchdog thread) so nothing can outlive the benchmark.
//! Only loopback addresses are accepted.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, timeout, timeout_at};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "loadgen", about = "Upstream servers and load clients for bench/perf (loopback only)")]
struct Cli {
    /// Tokio worker threads; 0 or 1 = a single-threaded runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Server: writes --bytes bytes to every connection, then closes it.
    Source {
        #[command(flatten)]
        srv: ServerOpts,
        #[arg(long, default_value_t = 4_000_000_000)]
        bytes: u64,
    },
    /// Server: echoes everything back (TCP_NODELAY).
    Echo {
        #[command(flatten)]
        srv: ServerOpts,
    },
    /// Server: minimal HTTP/1.1 keep-alive server answering every request with a fixed body.
    HttpServer {
        #[command(flatten)]
        srv: ServerOpts,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 100)]
        body: usize,
    },
    /// Server: for one-way delays. Reads 16-byte messages whose first 8 bytes are the sender's
    /// CLOCK_REALTIME in ns (little endian) and answers each with 16 bytes: the one-way delay
    /// in ns, from the kernel's receive timestamp (SO_TIMESTAMPNS), so this server's own
    /// wake-up is not in the figure. Pair with `ping-pong --stamp`.
    StampServer {
        #[command(flatten)]
        srv: ServerOpts,
    },
    /// Server: sends one byte ("!") on accept, then holds the connection until the peer closes.
    IdleServer {
        #[command(flatten)]
        srv: ServerOpts,
    },
    /// Client: one stream, reads until EOF (or --bytes, or --duration); reports MB/s.
    Bulk {
        #[command(flatten)]
        cli: ClientOpts,
        /// Stop after this many bytes (default: until EOF).
        #[arg(long)]
        bytes: Option<u64>,
        /// Also report a steady rate that ignores the first SECS seconds: bytes of the reads
        /// after the first read completed at or after SECS, divided by the time from that read
        /// to the last one.
        #[arg(long, default_value_t = 0.0)]
        skip: f64,
    },
    /// Client: TCP_NODELAY connection(s), write --size bytes and read them back; RTT histogram.
    PingPong {
        #[command(flatten)]
        cli: ClientOpts,
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Maximum measured round trips (in total, over all connections).
        #[arg(long, default_value_t = 2_000_000)]
        count: u64,
        /// Round trips done before measuring (per connection).
        #[arg(long, default_value_t = 2000)]
        warmup: u64,
        /// Connections doing ping-pong at the same time; their samples are merged.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Also print every round trip ("samples_ns", in the order measured per connection).
        #[arg(long)]
        raw: bool,
        /// Idle microseconds between measured round trips (not timed), to reproduce the idle
        /// spells a delayed exchange has.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// Talk to a stamp-server: each sample is the one-way delay it measured (send to
        /// kernel receive), not the round trip. Forces --size 16.
        #[arg(long)]
        stamp: bool,
    },
    /// Client: C keep-alive connections doing GET / back to back; req/s and latency quantiles.
    HttpLoad {
        #[command(flatten)]
        cli: ClientOpts,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Seconds of load before the measured window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Also report CPU time (utime+stime) of this PID over the measured window, per request.
        #[arg(long)]
        cpu_pid: Option<u32>,
    },
    /// Client: a new connection per request (Connection: close); C concurrent workers; conn/s.
    ConnRate {
        #[command(flatten)]
        cli: ClientOpts,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Client: opens N connections to an idle server (each waits for its "!" byte), prints a
    /// line, then holds them until a line or EOF on stdin, or --duration, then closes them.
    IdleHold {
        #[command(flatten)]
        cli: ClientOpts,
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        /// Connections being opened at the same time.
        #[arg(long, default_value_t = 32)]
        parallel: usize,
    },
}

#[derive(Args, Clone)]
struct ServerOpts {
    /// Address to bind (loopback only); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Seconds to serve before exiting by itself.
    #[arg(long, default_value_t = 900.0)]
    duration: f64,
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// Target address (loopback only).
    #[arg(long)]
    addr: String,
    /// Seconds of measurement (an upper bound for bulk / ping-pong / idle-hold).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Extra seconds past warmup + duration before the watchdog kills the process.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
}

// ---------------------------------------------------------------------------------------------
// small helpers

enum J {
    S(String),
    F(f64),
    U(u64),
    B(bool),
    L(Vec<u64>),
}

fn emit(pairs: &[(&str, J)]) {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(k);
        s.push_str("\":");
        match v {
            J::S(x) => {
                s.push('"');
                for c in x.chars() {
                    match c {
                        '"' => s.push_str("\\\""),
                        '\\' => s.push_str("\\\\"),
                        c if (c as u32) < 0x20 => s.push(' '),
                        c => s.push(c),
                    }
                }
                s.push('"');
            }
            J::F(x) if x.is_finite() => s.push_str(&format!("{x:.3}")),
            J::F(_) => s.push_str("null"),
            J::U(x) => s.push_str(&x.to_string()),
            J::B(x) => s.push_str(if *x { "true" } else { "false" }),
            J::L(v) => {
                s.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&x.to_string());
                }
                s.push(']');
            }
        }
    }
    s.push('}');
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn loopback(addr: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = addr.parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address; loadgen only uses loopback"));
    }
    Ok(a)
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x.clamp(0.0, 86_400.0))
}

/// Kills the process after `after`, whatever it is doing.
fn watchdog(after: Duration, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        emit(&[("test", J::S(what.into())), ("error", J::S("hard deadline reached".into()))]);
        std::process::exit(3);
    });
}

/// Latency quantiles in microseconds from nanosecond samples (sorted in place).
fn quantiles(ns: &mut [u64]) -> Vec<(&'static str, J)> {
    ns.sort_unstable();
    let q = |p: f64| -> f64 {
        if ns.is_empty() {
            return f64::NAN;
        }
        let i = ((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1;
        ns[i] as f64 / 1000.0
    };
    let mean = if ns.is_empty() {
        f64::NAN
    } else {
        ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64 / 1000.0
    };
    vec![
        ("p50_us", J::F(q(0.50))),
        ("p90_us", J::F(q(0.90))),
        ("p99_us", J::F(q(0.99))),
        ("p999_us", J::F(q(0.999))),
        ("max_us", J::F(q(1.0))),
        ("mean_us", J::F(mean)),
    ]
}

/// utime + stime of a process in microseconds, from /proc/PID/stat.
fn cpu_us(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the command name: state(3) ... utime(14) stime(15), so indexes 11 and 12 here
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(ticks as f64 * 1e6 / hz)
}

async fn connect(addr: SocketAddr, nodelay: bool) -> std::io::Result<TcpStream> {
    let s = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    if nodelay {
        s.set_nodelay(true)?;
    }
    Ok(s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (content-length, connection: close) from an HTTP header block.
fn parse_head(head: &[u8]) -> (Option<usize>, bool) {
    let mut cl = None;
    let mut close = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = &line[..colon];
        let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = value.parse().ok();
        } else if name.eq_ignore_ascii_case(b"connection") && value.to_ascii_lowercase().contains("close") {
            close = true;
        }
    }
    (cl, close)
}

// ---------------------------------------------------------------------------------------------
// servers

async fn serve<F, Fut>(role: &'static str, opts: ServerOpts, handler: F) -> i32
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = match loopback(&opts.listen) {
        Ok(a) => a,
        Err(e) => {
            emit(&[("role", J::S(role.into())), ("error", J::S(e))]);
            return 2;
        }
    };
    let sock = match if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(4096)
        }) {
        Ok(l) => l,
        Err(e) => {
            emit(&[("role", J::S(role.into())), ("error", J::S(format!("bind {addr}: {e}")))]);
            return 2;
        }
    };
    let listener: TcpListener = sock;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    emit(&[("role", J::S(role.into())), ("listen", J::S(local)), ("pid", J::U(std::process::id() as u64))]);
    let end = tokio::time::Instant::now() + secs(opts.duration);
    let mut accepted = 0u64;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    accepted += 1;
                    tokio::spawn(handler(s));
                }
                Err(e) => {
                    eprintln!("loadgen {role}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sleep_until(end) => break,
        }
    }
    emit(&[("role", J::S(role.into())), ("event", J::S("stopped".into())), ("accepted", J::U(accepted))]);
    0
}

/// Reads and discards until EOF, error or `limit`.
async fn drain(s: &mut TcpStream, limit: Duration) {
    let mut b = [0u8; 4096];
    let _ = timeout(limit, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

async fn source_conn(mut s: TcpStream, bytes: u64) {
    let buf = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = s.shutdown().await;
    drain(&mut s, Duration::from_secs(10)).await;
}

async fn echo_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn http_conn(mut s: TcpStream, keep: Arc<Vec<u8>>, close: Arc<Vec<u8>>) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 16 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut consumed = 0;
        let mut closing = false;
        while let Some(pos) = find(&buf[consumed..], b"\r\n\r\n") {
            let (cl, wants_close) = parse_head(&buf[consumed..consumed + pos]);
            let total = pos + 4 + cl.unwrap_or(0);
            if buf.len() - consumed < total {
                break; // request body not complete yet
            }
            consumed += total;
            if wants_close {
                out.extend_from_slice(&close);
                closing = true;
                break;
            }
            out.extend_from_slice(&keep);
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if closing {
            let _ = s.shutdown().await;
            drain(&mut s, IO_TIMEOUT).await;
            return;
        }
        if buf.len() > 64 * 1024 {
            return; // not HTTP we understand
        }
    }
}

async fn idle_conn(mut s: TcpStream) {
    if s.write_all(b"!").await.is_err() {
        return;
    }
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// CLOCK_REALTIME in ns: the clock SO_TIMESTAMPNS stamps with, shared by every process.
fn realtime_ns() -> i128 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut t) };
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

/// One non-blocking recvmsg; returns the bytes read and the kernel receive timestamp (ns,
/// CLOCK_REALTIME) of the last segment read, when the kernel gave one.
fn recv_stamped(fd: std::os::fd::RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<i128>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket owned by the caller; msg points at live buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within msg_controllen, as the kernel filled it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

async fn stamp_conn(mut s: TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = s.set_nodelay(true);
    let fd = s.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, (&on as *const libc::c_int).cast(),
                         std::mem::size_of::<libc::c_int>() as _)
    };
    if rc != 0 {
        eprintln!("loadgen stamp-server: SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        return;
    }
    let mut msg = [0u8; 16];
    let mut have = 0usize;
    loop {
        if s.readable().await.is_err() {
            return;
        }
        let got = s.try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, &mut msg[have..]));
        let (n, stamp) = match got {
            Ok((0, _)) => return,
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        have += n;
        if have < msg.len() {
            continue;
        }
        have = 0;
        let sent = i64::from_le_bytes(msg[..8].try_into().unwrap_or_default()) as i128;
        // Without a kernel stamp, fall back to "now" (includes this server's wake-up) and say so.
        let (arrived, flag) = match stamp {
            Some(t) => (t, 0u64),
            None => (realtime_ns(), 1u64),
        };
        let one_way = (arrived - sent).clamp(0, i64::MAX as i128) as u64;
        let mut reply = [0u8; 16];
        reply[..8].copy_from_slice(&one_way.to_le_bytes());
        reply[8..].copy_from_slice(&flag.to_le_bytes());
        if s.write_all(&reply).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// clients

async fn bulk(cli: ClientOpts, limit: Option<u64>, skip: f64) -> i32 {
    let addr = match loopback(&cli.addr) {
        Ok(a) => a,
        Err(e) => return fail("bulk", e),
    };
    let end = tokio::time::Instant::now() + secs(cli.duration);
    let mut s = match connect(addr, false).await {
        Ok(s) => s,
        Err(e) => return fail("bulk", format!("connect {addr}: {e}")),
    };
    let t0 = Instant::now();
    let steady_from = t0 + secs(skip);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut eof = false;
    let mut err = String::new();
    let mut first_byte: Option<Instant> = None;
    // (time, bytes read so far) at the first read completed at or after `steady_from`, and at the last read
    let mut mark_a: Option<(Instant, u64)> = None;
    let mut mark_b: Option<(Instant, u64)> = None;
    let mut steady_reads = 0u64;
    while limit.is_none_or(|l| total < l) {
        match timeout_at(end, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                eof = true;
                break;
            }
            Ok(Ok(n)) => {
                let now = Instant::now();
                total += n as u64;
                first_byte.get_or_insert(now);
                if now >= steady_from {
                    if mark_a.is_none() {
                        mark_a = Some((now, total));
                    } else {
                        steady_reads += 1;
                        mark_b = Some((now, total));
                    }
                }
            }
            Ok(Err(e)) => {
                err = e.to_string();
                break;
            }
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let (steady_bytes, steady_secs) = match (mark_a, mark_b) {
        (Some((ta, ba)), Some((tb, bb))) => (bb - ba, (tb - ta).as_secs_f64()),
        _ => (0, 0.0),
    };
    emit(&[
        ("test", J::S("bulk".into())),
        ("bytes", J::U(total)),
        ("secs", J::F(el)),
        ("mb_per_s", J::F(total as f64 / el / 1e6)),
        ("first_byte_s", J::F(first_byte.map_or(f64::NAN, |t| (t - t0).as_secs_f64()))),
        ("skip_s", J::F(skip)),
        ("steady_bytes", J::U(steady_bytes)),
        ("steady_secs", J::F(steady_secs)),
        ("steady_reads", J::U(steady_reads)),
        (
            "steady_bytes_per_s",
            J::F(if steady_secs > 0.0 { steady_bytes as f64 / steady_secs } else { f64::NAN }),
        ),
        ("eof", J::B(eof)),
        ("error", J::S(err)),
    ]);
    0
}

fn fail(test: &str, e: String) -> i32 {
    emit(&[("test", J::S(test.into())), ("error", J::S(e))]);
    1
}

/// One ping-pong connection: warm-up round trips (until `warm_end`), then up to `count` measured
/// ones for `duration`. Returns the round trips in nanoseconds and the error that stopped it, if any.
#[allow(clippy::too_many_arguments)]
async fn pp_conn(
    addr: SocketAddr,
    size: usize,
    count: u64,
    warmup: u64,
    warm_end: Instant,
    duration: Duration,
    gap_us: u64,
    stamp: bool,
) -> (Vec<u64>, String) {
    let mut s = match connect(addr, true).await {
        Ok(s) => s,
        Err(e) => return (Vec::new(), format!("connect {addr}: {e}")),
    };
    let mut msg = vec![b'p'; size];
    let mut rbuf = vec![0u8; size];
    for _ in 0..warmup {
        if Instant::now() >= warm_end {
            break;
        }
        let r = timeout(IO_TIMEOUT, async {
            s.write_all(&msg).await?;
            s.read_exact(&mut rbuf).await
        })
        .await;
        if !matches!(r, Ok(Ok(_))) {
            return (Vec::new(), "warmup round trip failed".into());
        }
    }
    let mut lat: Vec<u64> = Vec::with_capacity(count.min(2_000_000) as usize);
    let mut err = String::new();
    let end = Instant::now() + duration;
    while (lat.len() as u64) < count && lat.len() < 20_000_000 {
        if gap_us > 0 {
            // A blocking sleep on purpose: exact to ~0.1 ms, and this client has nothing else to do.
            std::thread::sleep(Duration::from_micros(gap_us));
        }
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        if stamp {
            msg[..8].copy_from_slice(&(realtime_ns() as i64).to_le_bytes());
        }
        let r = timeout(IO_TIMEOUT, async {
            s.write_all(&msg).await?;
            s.read_exact(&mut rbuf).await
        })
        .await;
        match r {
            Ok(Ok(_)) if stamp => {
                if rbuf[8..16] != [0u8; 8] {
                    err = "the stamp-server got no kernel receive timestamp".into();
                    break;
                }
                lat.push(u64::from_le_bytes(rbuf[..8].try_into().unwrap_or_default()));
            }
            Ok(Ok(_)) => lat.push(t0.elapsed().as_nanos() as u64),
            Ok(Err(e)) => {
                err = e.to_string();
                break;
            }
            Err(_) => {
                err = "round trip timed out".into();
                break;
            }
        }
    }
    (lat, err)
}

#[allow(clippy::too_many_arguments)]
async fn ping_pong(
    cli: ClientOpts,
    size: usize,
    count: u64,
    warmup: u64,
    conns: usize,
    raw: bool,
    gap_us: u64,
    stamp: bool,
) -> i32 {
    let addr = match loopback(&cli.addr) {
        Ok(a) => a,
        Err(e) => return fail("ping-pong", e),
    };
    let size = if stamp { 16 } else { size.max(1) };
    let conns = conns.clamp(1, 1000);
    let per_conn = count.div_ceil(conns as u64);
    let warm_end = Instant::now() + secs(cli.duration.min(2.0));
    let start = Instant::now();
    let duration = secs(cli.duration);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(pp_conn(addr, size, per_conn, warmup, warm_end, duration, gap_us, stamp)))
        .collect();
    let mut lat: Vec<u64> = Vec::new();
    let mut err = String::new();
    let mut failed = 0u64;
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                if !e.is_empty() {
                    failed += 1;
                    err = e;
                }
                lat.extend_from_slice(&l);
            }
            Err(e) => {
                failed += 1;
                err = e.to_string();
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    let n = lat.len() as u64;
    let mut out = vec![
        ("test", J::S("ping-pong".into())),
        ("count", J::U(n)),
        ("secs", J::F(el)),
        ("size", J::U(size as u64)),
        ("conns", J::U(conns as u64)),
        ("failed_conns", J::U(failed)),
        ("one_way", J::B(stamp)),
    ];
    if raw {
        out.push(("samples_ns", J::L(lat.clone())));
    }
    out.extend(quantiles(&mut lat));
    out.push(("error", J::S(err)));
    emit(&out);
    0
}

const GET_KEEP: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// Reads one HTTP response (status 200, Content-Length body) from `s`, keeping leftovers in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, tmp: &mut [u8]) -> Result<(), String> {
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        if rounds > 100_000 {
            return Err("response too long".into());
        }
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                return Err(format!("bad response: {:?}", String::from_utf8_lossy(&buf[..pos.min(60)])));
            }
            let (cl, _) = parse_head(&buf[..pos]);
            let total = pos + 4 + cl.unwrap_or(0);
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(());
            }
        }
        match s.read(tmp).await {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

struct WorkerOut {
    lat: Vec<u64>,
    total: u64,
    errors: u64,
    last_error: String,
}

async fn http_worker(addr: SocketAddr, ms: Instant, me: Instant) -> WorkerOut {
    let mut w = WorkerOut { lat: Vec::with_capacity(65_536), total: 0, errors: 0, last_error: String::new() };
    let mut s = match connect(addr, true).await {
        Ok(s) => s,
        Err(e) => {
            w.errors += 1;
            w.last_error = format!("connect: {e}");
            return w;
        }
    };
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        let t0 = Instant::now();
        if t0 >= me {
            break;
        }
        let r = timeout(IO_TIMEOUT, async {
            s.write_all(GET_KEEP).await.map_err(|e| e.to_string())?;
            read_response(&mut s, &mut buf, &mut tmp).await
        })
        .await;
        match r {
            Ok(Ok(())) => {
                let t1 = Instant::now();
                w.total += 1;
                if t0 >= ms && t1 <= me {
                    w.lat.push((t1 - t0).as_nanos() as u64);
                }
            }
            Ok(Err(e)) => {
                w.errors += 1;
                w.last_error = e;
                break;
            }
            Err(_) => {
                w.errors += 1;
                w.last_error = "request timed out".into();
                break;
            }
        }
    }
    w
}

async fn http_load(cli: ClientOpts, conns: usize, warmup: f64, cpu_pid: Option<u32>) -> i32 {
    let addr = match loopback(&cli.addr) {
        Ok(a) => a,
        Err(e) => return fail("http-load", e),
    };
    let conns = conns.clamp(1, 10_000);
    let ms = Instant::now() + secs(warmup);
    let me = ms + secs(cli.duration);
    // CPU of the proxy process, sampled at the edges of the measured window by a plain thread
    let cpu = cpu_pid.map(|pid| {
        std::thread::spawn(move || {
            std::thread::sleep(ms.saturating_duration_since(Instant::now()));
            let a = cpu_us(pid);
            std::thread::sleep(me.saturating_duration_since(Instant::now()));
            let b = cpu_us(pid);
            match (a, b) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            }
        })
    });
    let tasks: Vec<_> = (0..conns).map(|_| tokio::spawn(http_worker(addr, ms, me))).collect();
    let WorkerOut { mut lat, total, errors, last_error } = join_workers(tasks).await;
    let window = cli.duration.max(1e-9);
    let n = lat.len() as u64;
    let mut out = vec![
        ("test", J::S("http-load".into())),
        ("conns", J::U(conns as u64)),
        ("requests", J::U(n)),
        ("requests_total", J::U(total)),
        ("secs", J::F(window)),
        ("rps", J::F(n as f64 / window)),
        ("errors", J::U(errors)),
    ];
    out.extend(quantiles(&mut lat));
    if let Some(h) = cpu {
        let d = h.join().ok().flatten();
        out.push(("cpu_pid", J::U(cpu_pid.unwrap_or(0) as u64)));
        out.push(("cpu_us", J::F(d.unwrap_or(f64::NAN))));
        out.push(("cpu_us_per_req", J::F(d.map(|d| d / n.max(1) as f64).unwrap_or(f64::NAN))));
    }
    out.push(("error", J::S(last_error)));
    emit(&out);
    0
}

/// Waits for every worker and merges what they measured.
async fn join_workers(tasks: Vec<tokio::task::JoinHandle<WorkerOut>>) -> WorkerOut {
    let mut all = WorkerOut { lat: Vec::new(), total: 0, errors: 0, last_error: String::new() };
    for t in tasks {
        if let Ok(w) = t.await {
            all.lat.extend_from_slice(&w.lat);
            all.total += w.total;
            all.errors += w.errors;
            if !w.last_error.is_empty() {
                all.last_error = w.last_error;
            }
        }
    }
    all
}

async fn conn_once(addr: SocketAddr, buf: &mut Vec<u8>, tmp: &mut [u8]) -> Result<(), String> {
    let mut s = connect(addr, true).await.map_err(|e| format!("connect: {e}"))?;
    timeout(IO_TIMEOUT, async {
        s.write_all(GET_CLOSE).await.map_err(|e| e.to_string())?;
        buf.clear();
        let mut reads = 0u32;
        loop {
            reads += 1;
            if reads > 10_000 {
                return Err("response too long".to_string());
            }
            match s.read(tmp).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        if !buf.starts_with(b"HTTP/1.1 200") {
            return Err("bad or empty response".to_string());
        }
        Ok(())
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

async fn conn_worker(addr: SocketAddr, ms: Instant, me: Instant) -> WorkerOut {
    let mut w = WorkerOut { lat: Vec::with_capacity(16_384), total: 0, errors: 0, last_error: String::new() };
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = vec![0u8; 4096];
    loop {
        let t0 = Instant::now();
        if t0 >= me {
            break;
        }
        match conn_once(addr, &mut buf, &mut tmp).await {
            Ok(()) => {
                let t1 = Instant::now();
                w.total += 1;
                if t0 >= ms && t1 <= me {
                    w.lat.push((t1 - t0).as_nanos() as u64);
                }
            }
            Err(e) => {
                w.errors += 1;
                w.last_error = e;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    w
}

async fn conn_rate(cli: ClientOpts, conns: usize, warmup: f64) -> i32 {
    let addr = match loopback(&cli.addr) {
        Ok(a) => a,
        Err(e) => return fail("conn-rate", e),
    };
    let conns = conns.clamp(1, 1000);
    let ms = Instant::now() + secs(warmup);
    let me = ms + secs(cli.duration);
    let tasks: Vec<_> = (0..conns).map(|_| tokio::spawn(conn_worker(addr, ms, me))).collect();
    let WorkerOut { mut lat, total, errors, last_error } = join_workers(tasks).await;
    let window = cli.duration.max(1e-9);
    let n = lat.len() as u64;
    let mut out = vec![
        ("test", J::S("conn-rate".into())),
        ("conns", J::U(conns as u64)),
        ("connections", J::U(n)),
        ("connections_total", J::U(total)),
        ("secs", J::F(window)),
        ("conn_per_s", J::F(n as f64 / window)),
        ("errors", J::U(errors)),
    ];
    out.extend(quantiles(&mut lat));
    out.push(("error", J::S(last_error)));
    emit(&out);
    0
}

async fn idle_hold(cli: ClientOpts, conns: usize, parallel: usize) -> i32 {
    let addr = match loopback(&cli.addr) {
        Ok(a) => a,
        Err(e) => return fail("idle-hold", e),
    };
    let conns = conns.clamp(1, 100_000);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.clamp(1, 1024)));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut s = connect(addr, false).await.map_err(|e| format!("connect: {e}"))?;
                let mut b = [0u8; 1];
                match timeout(Duration::from_secs(10), s.read_exact(&mut b)).await {
                    Ok(Ok(_)) if b[0] == b'!' => Ok(s),
                    Ok(Ok(_)) => Err("unexpected greeting".to_string()),
                    Ok(Err(e)) => Err(format!("greeting: {e}")),
                    Err(_) => Err("greeting timed out".to_string()),
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(conns);
    let (mut failed, mut last_error) = (0u64, String::new());
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => {
                failed += 1;
                last_error = e;
            }
            Err(e) => {
                failed += 1;
                last_error = e.to_string();
            }
        }
    }
    emit(&[
        ("test", J::S("idle-hold".into())),
        ("event", J::S("opened".into())),
        ("opened", J::U(held.len() as u64)),
        ("failed", J::U(failed)),
        ("secs", J::F(t0.elapsed().as_secs_f64())),
        ("error", J::S(last_error)),
    ]);
    // hold until a line (or EOF) on stdin, or --duration
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let reason = tokio::select! {
        _ = stdin.read_line(&mut line) => "stdin",
        _ = tokio::time::sleep(secs(cli.duration)) => "duration",
    };
    let n = held.len() as u64;
    drop(held);
    emit(&[
        ("test", J::S("idle-hold".into())),
        ("event", J::S("closed".into())),
        ("closed", J::U(n)),
        ("reason", J::S(reason.into())),
    ]);
    0
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let cli = Cli::parse();
    let mut rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cli.threads.min(64));
        b
    };
    let rt = rt.enable_all().build().expect("tokio runtime");
    // hard deadline for every role
    let (hard, what): (f64, &'static str) = match &cli.cmd {
        Cmd::Source { srv, .. } => (srv.duration + 10.0, "source"),
        Cmd::Echo { srv } => (srv.duration + 10.0, "echo"),
        Cmd::HttpServer { srv, .. } => (srv.duration + 10.0, "http-server"),
        Cmd::IdleServer { srv } => (srv.duration + 10.0, "idle-server"),
        Cmd::StampServer { srv } => (srv.duration + 10.0, "stamp-server"),
        Cmd::Bulk { cli, .. } => (cli.duration + cli.grace, "bulk"),
        Cmd::PingPong { cli, .. } => (cli.duration + 2.0 + cli.grace, "ping-pong"),
        Cmd::HttpLoad { cli, warmup, .. } => (cli.duration + warmup + cli.grace, "http-load"),
        Cmd::ConnRate { cli, warmup, .. } => (cli.duration + warmup + cli.grace, "conn-rate"),
        Cmd::IdleHold { cli, .. } => (cli.duration + cli.grace, "idle-hold"),
    };
    watchdog(secs(hard), what);
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Source { srv, bytes } => serve("source", srv, move |s| source_conn(s, bytes)).await,
            Cmd::Echo { srv } => serve("echo", srv, echo_conn).await,
            Cmd::HttpServer { srv, body } => {
                let body = vec![b'x'; body.min(1 << 20)];
                let mk = |conn: &str| {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    Arc::new(r)
                };
                let (keep, close) = (mk("keep-alive"), mk("close"));
                serve("http-server", srv, move |s| http_conn(s, keep.clone(), close.clone())).await
            }
            Cmd::IdleServer { srv } => serve("idle-server", srv, idle_conn).await,
            Cmd::Bulk { cli, bytes, skip } => bulk(cli, bytes, skip).await,
            Cmd::PingPong { cli, size, count, warmup, conns, raw, gap_us, stamp } => {
                ping_pong(cli, size, count, warmup, conns, raw, gap_us, stamp).await
            }
            Cmd::StampServer { srv } => serve("stamp-server", srv, stamp_conn).await,
            Cmd::HttpLoad { cli, conns, warmup, cpu_pid } => http_load(cli, conns, warmup, cpu_pid).await,
            Cmd::ConnRate { cli, conns, warmup } => conn_rate(cli, conns, warmup).await,
            Cmd::IdleHold { cli, conns, parallel } => idle_hold(cli, conns, parallel).await,
        }
    });
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
