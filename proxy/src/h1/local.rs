//! What one worker's HTTP/1 engine keeps between requests: idle tenant
//! connections by address, and the buffers a request borrows while it is
//! in flight (an idle client connection holds none, as in HAProxy).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Idle connections kept per tenant address; more are closed.
const MAX_IDLE_PER_ADDR: usize = 512;
/// Free buffers kept per size; more are freed.
const MAX_FREE_BUFFERS: usize = 256;

/// One worker's pools. Only that worker's thread uses it, so its locks
/// are never contended; they are there because tokio tasks must be Send.
pub(crate) struct Local {
    idle: Mutex<HashMap<SocketAddr, Vec<TcpStream>>>,
    free: [Mutex<Vec<Box<[u8]>>>; 2],
    /// Head-writing buffers, kept with their capacity.
    outs: Mutex<Vec<Vec<u8>>>,
    sizes: [usize; 2],
}

/// Which of the two buffer sizes.
#[derive(Clone, Copy)]
pub(crate) enum Size {
    /// Client side: one request head at most.
    Request = 0,
    /// Tenant side: one response head at most, and body chunks.
    Response = 1,
}

impl Local {
    pub(crate) fn new(request_buf: usize, response_buf: usize) -> Arc<Local> {
        Arc::new(Local {
            idle: Mutex::new(HashMap::new()),
            free: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            outs: Mutex::new(Vec::new()),
            sizes: [request_buf, response_buf],
        })
    }

    pub(crate) fn buf(self: &Arc<Self>, size: Size) -> Buf {
        Buf {
            data: self.storage(size),
            start: 0,
            end: 0,
            home: self.clone(),
            size,
        }
    }

    fn storage(&self, size: Size) -> Box<[u8]> {
        let free = self.free[size as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        free.unwrap_or_else(|| vec![0; self.sizes[size as usize]].into_boxed_slice())
    }

    fn give_back(&self, size: Size, data: Box<[u8]>) {
        let mut free = self.free[size as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_FREE_BUFFERS {
            free.push(data);
        }
    }

    /// A buffer the heads of one request are written into.
    pub(crate) fn take_out(&self) -> Vec<u8> {
        self.outs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(4096))
    }

    /// Back when the connection goes idle; a large one is freed.
    pub(crate) fn put_out(&self, mut out: Vec<u8>) {
        if out.capacity() == 0 || out.capacity() > 64 * 1024 {
            return;
        }
        out.clear();
        let mut outs = self.outs.lock().unwrap_or_else(PoisonError::into_inner);
        if outs.len() < MAX_FREE_BUFFERS {
            outs.push(out);
        }
    }

    /// An idle connection to `addr` that the tenant has not closed.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some(stream) = list.pop() {
            if still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    pub(crate) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(stream);
        }
    }
}

/// An idle connection is usable while nothing is readable on it: a
/// tenant that closed it (EOF) or sent bytes nobody asked for has spoiled
/// it. Asks the runtime's cached readiness first, so a quiet connection
/// costs no system call.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Forgets a readiness the runtime cached, after a read that returned
/// less than it asked for (the socket had no more): the next wait goes to
/// epoll instead of costing a read that finds nothing. A later arrival is
/// a new edge, so no wakeup is lost.
pub(crate) fn drained(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
}

/// A buffer borrowed from the worker: bytes `start..end` are unread.
pub(crate) struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
    home: Arc<Local>,
    size: Size,
}

impl Buf {
    pub(crate) fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the storage back to the worker while nothing is unread: a
    /// connection that may wait long for its next bytes (an upgraded
    /// one) then holds none. `spare` takes storage again.
    pub(crate) fn release(&mut self) {
        if self.is_empty() && !self.data.is_empty() {
            self.home
                .give_back(self.size, std::mem::take(&mut self.data));
        }
    }

    /// Free space after the unread bytes, moved to the front first when
    /// the end is full.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = self.home.storage(self.size);
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if !self.data.is_empty() {
            self.home
                .give_back(self.size, std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_compact() {
        let local = Local::new(8, 16);
        let mut b = local.buf(Size::Request);
        assert_eq!(b.capacity(), 8);
        b.spare()[..8].copy_from_slice(b"abcdefgh");
        b.filled(8);
        b.consume(6);
        assert_eq!(b.data(), b"gh");
        assert_eq!(b.spare().len(), 6);
        assert_eq!(b.data(), b"gh");
        drop(b);
        assert_eq!(local.free[0].lock().unwrap().len(), 1);
        let mut b = local.buf(Size::Request);
        assert!(b.is_empty());
        assert_eq!(local.free[0].lock().unwrap().len(), 0);
        // Released while empty: the storage is back, and comes again.
        b.release();
        assert_eq!(local.free[0].lock().unwrap().len(), 1);
        assert_eq!(b.spare().len(), 8);
        assert_eq!(local.free[0].lock().unwrap().len(), 0);
        // Not while it holds bytes.
        b.filled(3);
        b.release();
        assert_eq!(b.data().len(), 3);
        assert_eq!(local.free[0].lock().unwrap().len(), 0);
        b.consume(3);
        b.release();
        drop(b);
        assert_eq!(
            local.free[0].lock().unwrap().len(),
            1,
            "a released buffer is not given back twice"
        );
    }
}
