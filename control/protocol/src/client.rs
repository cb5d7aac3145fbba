//! A client of the control socket, for podswitchctl and the CNI plugin.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Reply, Request};

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached or broke.
    Io(io::Error),
    /// The daemon answered with an error.
    Daemon(String),
    /// The daemon's answer was not a reply.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Daemon(e) => write!(f, "{e}"),
            ClientError::Protocol(e) => write!(f, "unexpected reply from the daemon: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to podswitchd's control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects, with a timeout for every reply.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot reach podswitchd at {}: {e}", path.display()),
            )
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one line and returns the reply line.
    pub fn raw(&mut self, line: &str) -> io::Result<String> {
        let sent = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"));
        let mut reply = String::new();
        match (sent, self.reader.read_line(&mut reply)) {
            // A daemon that refuses a client (credentials, too many clients)
            // answers and closes at once, so the write may fail with a
            // broken pipe while its reason already waits to be read.
            (_, Ok(n)) if n > 0 => Ok(reply),
            (Err(e), _) => Err(e),
            (Ok(()), Ok(_)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "podswitchd closed the connection",
            )),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Sends a request and reads its result as `T`, the request's reply
    /// type in [`crate::reply`].
    pub fn call_for<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let result = self.call(request)?;
        T::deserialize(&result).map_err(|e| ClientError::Protocol(format!("{e}: {result}")))
    }

    /// Sends a request and returns its result as JSON.
    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let line = self.raw(&request.to_line()).map_err(ClientError::Io)?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
        if reply.ok {
            Ok(reply.result.unwrap_or(Value::Null))
        } else {
            Err(ClientError::Daemon(
                reply
                    .error
                    .unwrap_or_else(|| "error without a reason".into()),
            ))
        }
    }
}
