//! The control socket: a Unix stream socket, mode 0600, serving one
//! request and one reply per line to each client on its own thread.
//!
//! Only root and the daemon's own user may talk to it: the socket's mode
//! says so to the file system, and each client's credentials
//! (`SO_PEERCRED`) are checked when it connects, so a socket moved or
//! re-permissioned by mistake still refuses others (Cilium's CVE-2022-29178
//! was a control socket other users could reach). A bad line gets an error
//! reply and the connection stays open; a line over the length limit is
//! answered and skipped without being buffered.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::handler::Handler;
use crate::protocol::{Reply, Request, MAX_LINE};

/// Clients served at once; more are told to retry.
pub const MAX_CLIENTS: usize = 64;

/// How long the accept loop waits after an error it can outlive (out of
/// file descriptors, memory or threads): the client waits in the listen
/// backlog meanwhile, and a loop that tried again at once would spin on
/// the same error. Go's net/http waits too, 5 ms doubling up to a second.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// True if accept(2) failing with `e` says the listening socket itself is
/// unusable (accept(2), ERRORS), so that trying again cannot help; every
/// other error (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `ECONNABORTED`,
/// `EPROTO`, ...) belongs to one connection or to a shortage that passes.
fn listener_broken(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|code| {
        [
            Errno::BADF,
            Errno::INVAL,
            Errno::NOTSOCK,
            Errno::OPNOTSUPP,
            Errno::FAULT,
        ]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
    })
}

/// A bound control socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    clients: Arc<AtomicUsize>,
}

/// Stops a running [`Server`] from another thread.
#[derive(Debug, Clone)]
pub struct Stopper {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Stopper {
    /// Asks the server to stop and wakes its accept loop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
    }
}

impl Server {
    /// Binds `path` (creating its directory), mode 0600. A stale socket
    /// file is replaced; a socket another process still serves is not.
    pub fn bind(path: &Path, handler: Arc<Handler>) -> io::Result<Server> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is served by another running podswitchd", path.display()),
                    ));
                }
                fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not replacing it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            handler,
            stop: Arc::new(AtomicBool::new(false)),
            clients: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A handle that stops [`Self::run`].
    pub fn stopper(&self) -> Stopper {
        Stopper {
            path: self.path.clone(),
            stop: Arc::clone(&self.stop),
        }
    }

    /// Accepts and serves clients until stopped. An error that leaves the
    /// listening socket usable (the process out of file descriptors, say)
    /// is logged once, when it starts, and accepting goes on after
    /// 100 ms; only an error of the listening socket itself ends
    /// the loop, with that error.
    pub fn run(&self) -> io::Result<()> {
        let own_uid = rustix::process::getuid().as_raw();
        // Accepts that have failed in a row.
        let mut failing = 0u64;
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if listener_broken(&e) => return Err(e),
                Err(e) => {
                    if failing == 0 {
                        tracing::warn!(
                            "control socket: accept failed ({e}); trying again every {} ms",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    failing += 1;
                    thread::sleep(ACCEPT_RETRY);
                    continue;
                }
            };
            if failing > 0 {
                tracing::info!(failed = failing, "control socket: accepting again");
                failing = 0;
            }
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if cred.uid.is_root() || cred.uid.as_raw() == own_uid => {}
                Ok(cred) => {
                    let reply = Reply::error(format!(
                        "uid {} may not use this socket: only root and uid {own_uid}",
                        cred.uid.as_raw()
                    ));
                    let _ = writeln!(stream, "{}", reply.to_line());
                    continue;
                }
                Err(e) => {
                    let _ = writeln!(
                        stream,
                        "{}",
                        Reply::error(format!("cannot read peer credentials: {e}")).to_line()
                    );
                    continue;
                }
            }
            if self.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                self.clients.fetch_sub(1, Ordering::SeqCst);
                let _ = writeln!(
                    stream,
                    "{}",
                    Reply::error(format!("{MAX_CLIENTS} clients are connected; try again"))
                        .to_line()
                );
                continue;
            }
            let handler = Arc::clone(&self.handler);
            let clients = Arc::clone(&self.clients);
            let spawned = thread::Builder::new()
                .name("podswitch-client".into())
                .spawn(move || {
                    let _ = serve_client(stream, &handler);
                    clients.fetch_sub(1, Ordering::SeqCst);
                });
            // `thread::spawn` would panic: the client is let go instead
            // (its connection closes unanswered) and the next one tried.
            if let Err(e) = spawned {
                self.clients.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    "control socket: no thread for a client ({e}); its connection is closed"
                );
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Serves one client until it hangs up.
fn serve_client(stream: UnixStream, handler: &Handler) -> io::Result<()> {
    let reader = match stream.try_clone() {
        Ok(reader) => reader,
        // Out of descriptors for its reader: the client is told why,
        // rather than hung up on.
        Err(e) => {
            let reply = Reply::error(format!(
                "podswitchd cannot serve this connection ({e}); try again"
            ));
            let _ = writeln!(&stream, "{}", reply.to_line());
            return Err(e);
        }
    };
    let mut reader = BufReader::new(reader);
    let mut writer = stream;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let (complete, too_long) = read_line_bounded(&mut reader, &mut line)?;
        if line.is_empty() && !complete && !too_long {
            return Ok(()); // hung up
        }
        let reply = if too_long {
            Reply::error(format!("request line is over the {MAX_LINE}-byte limit"))
        } else {
            match std::str::from_utf8(&line) {
                Err(_) => Reply::error("request is not UTF-8"),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match Request::parse(text.trim_end()) {
                    Err(e) => Reply::error(e.to_string()),
                    Ok(request) => match handler.handle(&request) {
                        Ok(result) => Reply::ok(result),
                        Err(message) => Reply::error(message),
                    },
                },
            }
        };
        handler.requests().count(reply.ok);
        writeln!(writer, "{}", reply.to_line())?;
        if !complete && !too_long {
            return Ok(()); // the last line had no newline: the client is done
        }
    }
}

/// Reads up to a newline into `line`, keeping at most [`MAX_LINE`] bytes.
/// Returns (ended with a newline, was too long).
fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<(bool, bool)> {
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((false, too_long));
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = found.map_or(chunk.len(), |i| i + 1);
        reader.consume(consumed);
        if found.is_some() {
            return Ok((true, too_long));
        }
    }
}
