//! A small keep-alive HTTP/1.1 load generator for zero-loss tests: a few connections, each
//! sending `GET /` back to back and reconnecting when the server says `Connection: close`.
//! Every failure (connect, write, read, a non-200 answer) is recorded with its reason.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..connections)
            .map(|_| {
                let (stop, ok, errors) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
                std::thread::spawn(move || worker(port, &stop, &ok, &errors))
            })
            .collect();
        Load { stop, ok, errors, threads }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` further requests have succeeded (or panics after `limit`).
    pub fn wait_for_more(&self, more: u64, limit: Duration) {
        let target = self.ok() + more;
        let start = Instant::now();
        while self.ok() < target {
            assert!(start.elapsed() < limit, "load stalled at {} requests; errors: {:?}", self.ok(), self.errors.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the load and fails the test if any request failed; returns how many succeeded.
    pub fn stop_expecting_no_loss(self) -> u64 {
        let (ok, errors) = self.stop();
        assert!(errors.is_empty(), "{} of {} requests failed: {errors:?}", errors.len(), ok + errors.len() as u64);
        ok
    }

    /// Stops the load; returns (successful requests, failures).
    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), errors)
    }
}

fn worker(port: u16, stop: &AtomicBool, ok: &AtomicU64, errors: &Mutex<Vec<String>>) {
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match kept.take() {
            Some(c) => c,
            None => match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    BufReader::new(s)
                }
                Err(e) => {
                    errors.lock().unwrap().push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if let Err(e) = conn.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") {
            errors.lock().unwrap().push(format!("write: {e}"));
            continue;
        }
        match read_response(&mut conn) {
            Ok((200, close)) => {
                ok.fetch_add(1, Ordering::SeqCst);
                if !close {
                    kept = Some(conn);
                }
            }
            Ok((status, _)) => errors.lock().unwrap().push(format!("status {status}")),
            Err(e) => errors.lock().unwrap().push(format!("read: {e}")),
        }
    }
}

/// Reads one response; returns its status and whether the server will close the connection.
fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before the response"));
    }
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&line))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| bad(header))?;
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)?;
    Ok((status, close))
}
