//! `tmws-loadgen`: HTTP/1.1 load for tmws benchmarks, with latency kept per status code.
//!
//! wrk reports one latency distribution over every response; an overload benchmark needs the
//! latency of the *successful* ones apart from the refusals, and the SLA gates need open-loop
//! load (requests sent at a fixed rate, latency measured from the intended send time, so a
//! slow server cannot slow the clock down: no coordinated omission).
//!
//! ```text
//! tmws-loadgen --url http://127.0.0.1:8000/api/v1/execute --body '{"query": "check health"}'
//!     [--method POST] [--header 'authorization: Bearer T']... [--connections 64]
//!     [--duration 10] [--warmup 1] [--rate 0] [--threads 1] [--honor-retry-after]
//!     [--bodies FILE] [--raw] [--requests N]
//! ```
//!
//! `--requests N` (open loop only) sends exactly N requests at `--rate` and waits for every
//! answer: `--duration` is then N / rate.
//!
//! `--bodies FILE` sends the bodies of FILE (one per line) in turn instead of `--body`, so
//! that a run of cache misses never repeats a query. `--raw` adds every 2xx latency (in
//! microseconds, in completion order) as `ok_latencies_us`.
//!
//! `--rate 0` (default) is closed loop: each connection sends its next request when the last
//! is answered. `--rate R` is open loop: R requests per second are scheduled and handed to
//! whichever connection is free; one not yet sent when its time comes waits, and that wait
//! counts in its latency. Prints one JSON object: totals, and per status the count and the
//! 50/90/99/99.9th percentile and maximum latency in milliseconds (`ok` sums every 2xx).
//!
//! `--honor-retry-after` makes a closed-loop connection that got a 429 or 503 with
//! `Retry-After: N` wait before its next request, as a well-behaved client does: N seconds
//! plus up to half of that again at random, so refused clients do not all return at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

struct Options {
    host: String,
    port: u16,
    path: String,
    method: String,
    body: String,
    headers: Vec<String>,
    connections: usize,
    duration: f64,
    warmup: f64,
    rate: f64,
    threads: usize,
    honor_retry_after: bool,
    bodies: Vec<String>,
    raw: bool,
    requests: usize,
}

fn usage(problem: &str) -> ! {
    eprintln!("tmws-loadgen: {problem}");
    eprintln!(
        "usage: tmws-loadgen --url http://HOST:PORT/PATH [--body JSON] [--method POST] \
         [--header 'name: value']... [--connections N] [--duration S] [--warmup S] \
         [--rate R] [--threads T] [--honor-retry-after]"
    );
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut options = Options {
        host: String::new(),
        port: 80,
        path: "/".into(),
        method: "POST".into(),
        body: String::new(),
        headers: Vec::new(),
        connections: 16,
        duration: 10.0,
        warmup: 1.0,
        rate: 0.0,
        threads: 1,
        honor_retry_after: false,
        bodies: Vec::new(),
        raw: false,
        requests: 0,
    };
    while let Some(flag) = args.next() {
        if flag == "--honor-retry-after" {
            options.honor_retry_after = true;
            continue;
        }
        if flag == "--raw" {
            options.raw = true;
            continue;
        }
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let number = |text: String| -> f64 {
            text.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {text}")))
        };
        match flag.as_str() {
            "--url" => url = Some(value()),
            "--body" => options.body = value(),
            "--bodies" => {
                let path = value();
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| usage(&format!("--bodies {path}: {e}")));
                options.bodies = text
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                if options.bodies.is_empty() {
                    usage(&format!("--bodies {path}: no lines"));
                }
            }
            "--method" => options.method = value(),
            "--header" => options.headers.push(value()),
            "--connections" => options.connections = number(value()) as usize,
            "--duration" => options.duration = number(value()),
            "--warmup" => options.warmup = number(value()),
            "--rate" => options.rate = number(value()),
            "--threads" => options.threads = number(value()) as usize,
            "--requests" => options.requests = number(value()) as usize,
            other => usage(&format!("unknown option {other}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| usage("only http:// URLs"));
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or_else(|_| usage("bad port"))),
        None => (authority, 80),
    };
    options.host = host.to_string();
    options.port = port;
    options.path = path.to_string();
    if options.requests > 0 {
        if options.rate <= 0.0 {
            usage("--requests needs --rate");
        }
        options.duration = options.requests as f64 / options.rate;
    }
    if options.connections == 0 || options.threads == 0 || options.duration <= 0.0 {
        usage("--connections, --threads and --duration must be positive");
    }
    options
}

fn request_bytes(options: &Options, body: &str) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {}:{}\r\n",
        options.method, options.path, options.host, options.port
    );
    if !body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    head.push_str(&format!("content-length: {}\r\n", body.len()));
    for header in &options.headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// One keep-alive connection: sends the request, reads one response, returns its status.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(16 * 1024),
        })
    }

    /// (status, the server closes the connection, Retry-After seconds)
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool, Option<f64>)> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("no status line"))?;
        let close = head.contains("\r\nconnection: close");
        let retry_after = header_value(&head, "retry-after").and_then(|v| v.parse().ok());
        let length = header_value(&head, "content-length").and_then(|v| v.parse().ok());
        let chunked =
            header_value(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        self.buffer.drain(..head_end);
        if let Some(length) = length {
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.drain(..length);
        } else if chunked {
            self.skip_chunks().await?;
        } else {
            return Err(invalid("response without a length"));
        }
        Ok((status, close, retry_after))
    }

    async fn skip_chunks(&mut self) -> std::io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buffer, b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            let total = line_end + 2 + size + 2;
            while self.buffer.len() < total {
                self.fill().await?;
            }
            self.buffer.drain(..total);
            if size == 0 {
                return Ok(());
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("connection closed"));
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

#[derive(Default)]
struct Tally {
    latencies: BTreeMap<u16, Vec<u32>>, // status -> microseconds
    errors: u64,
    unsent: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (status, mut values) in other.latencies {
            self.latencies
                .entry(status)
                .or_default()
                .append(&mut values);
        }
        self.errors += other.errors;
        self.unsent += other.unsent;
    }
}

fn summary(values: &mut [u32], seconds: f64) -> Value {
    values.sort_unstable();
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1] as f64 / 1000.0
    };
    json!({
        "count": values.len(),
        "rps": values.len() as f64 / seconds,
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p95_ms": at(0.95), "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": values.last().map_or(0.0, |v| *v as f64 / 1000.0),
    })
}

/// A small xorshift generator: uniform in [0, 1), seeded per connection.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64);
        let local = &nanos as *const u64 as u64; // differs per task
        Self((nanos ^ local.rotate_left(17)) | 1)
    }

    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// (intended send time, request number)
type Tickets = Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<(Instant, usize)>>>;

async fn worker(
    address: Arc<String>,
    requests: Arc<Vec<Vec<u8>>>,
    first: usize,
    measure_from: Instant,
    stop_at: Instant,
    tickets: Option<Tickets>,
    honor_retry_after: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<Connection> = None;
    let mut jitter = Jitter::new();
    let mut sent = first;
    loop {
        let (intended, number) = match &tickets {
            None => {
                let now = Instant::now();
                if now >= stop_at {
                    break;
                }
                sent += 1;
                (now, sent - 1)
            }
            Some(tickets) => {
                let next = tickets.lock().await.recv().await;
                match next {
                    Some(ticket) if Instant::now() < stop_at => ticket,
                    Some(_) => {
                        tally.unsent += 1;
                        continue;
                    }
                    None => break,
                }
            }
        };
        if connection.is_none() {
            match Connection::open(&address).await {
                Ok(opened) => connection = Some(opened),
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let open = connection.as_mut().expect("opened above");
        let request = &requests[number % requests.len()];
        match open.exchange(request).await {
            Ok((status, close, retry_after)) => {
                let done = Instant::now();
                if intended >= measure_from {
                    let micros = done
                        .duration_since(intended)
                        .as_micros()
                        .min(u32::MAX as u128);
                    tally
                        .latencies
                        .entry(status)
                        .or_default()
                        .push(micros as u32);
                }
                if close {
                    connection = None;
                }
                if let (true, Some(seconds), true) = (
                    honor_retry_after,
                    retry_after,
                    status == 429 || status == 503,
                ) {
                    let wait = seconds * (1.0 + 0.5 * jitter.next());
                    let resume = (done + Duration::from_secs_f64(wait)).min(stop_at);
                    tokio::time::sleep_until(resume.into()).await;
                }
            }
            Err(_) => {
                if intended >= measure_from {
                    tally.errors += 1;
                }
                connection = None;
            }
        }
    }
    tally
}

fn main() {
    let options = parse_options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(run(&options));
    println!("{report}");
}

async fn run(options: &Options) -> Value {
    let address = Arc::new(format!("{}:{}", options.host, options.port));
    let requests: Vec<Vec<u8>> = if options.bodies.is_empty() {
        vec![request_bytes(options, &options.body)]
    } else {
        options
            .bodies
            .iter()
            .map(|body| request_bytes(options, body))
            .collect()
    };
    let requests = Arc::new(requests);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(options.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(options.duration);
    let limit = options.requests;
    // With a request count every ticket is sent, however late: the channel ends the run.
    let receive_until = if limit > 0 {
        stop_at + Duration::from_secs(3600)
    } else {
        stop_at
    };
    let tickets = if options.rate > 0.0 {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let interval = Duration::from_secs_f64(1.0 / options.rate);
        tokio::spawn(async move {
            let mut next = start;
            let mut number = 0usize;
            let more = |next: Instant, number: usize| {
                if limit > 0 {
                    number < limit
                } else {
                    next < stop_at
                }
            };
            while more(next, number) {
                tokio::time::sleep_until(next.into()).await;
                // Catch up in a burst after a stall: the schedule, not the loop, sets the pace.
                while next <= Instant::now() && more(next, number) {
                    if sender.send((next, number)).is_err() {
                        return;
                    }
                    number += 1;
                    next += interval;
                }
            }
        });
        Some(Arc::new(Mutex::new(receiver)))
    } else {
        None
    };
    // Closed loop: each connection starts at its own offset in the bodies.
    let stride = requests.len() / options.connections + 1;
    let workers: Vec<_> = (0..options.connections)
        .map(|index| {
            tokio::spawn(worker(
                address.clone(),
                requests.clone(),
                index * stride,
                measure_from,
                receive_until,
                tickets.clone(),
                options.honor_retry_after,
            ))
        })
        .collect();
    let mut tally = Tally::default();
    for handle in workers {
        if let Ok(part) = handle.await {
            tally.merge(part);
        }
    }
    let seconds = options.duration;
    let mut ok: Vec<u32> = Vec::new();
    let mut statuses = serde_json::Map::new();
    let mut total = 0usize;
    for (status, values) in tally.latencies.iter_mut() {
        total += values.len();
        if (200..300).contains(status) {
            ok.extend_from_slice(values);
        }
        statuses.insert(status.to_string(), summary(values, seconds));
    }
    let raw = options.raw.then(|| json!(ok.clone()));
    let mut report = json!({
        "connections": options.connections,
        "duration_s": seconds,
        "rate": if options.rate > 0.0 { json!(options.rate) } else { Value::Null },
        "requests": total,
        "rps": total as f64 / seconds,
        "errors": tally.errors,
        "unsent": tally.unsent,
        "ok": summary(&mut ok, seconds),
        "status": statuses,
    });
    if let Some(raw) = raw {
        report["ok_latencies_us"] = raw;
    }
    report
}
