//! A ring of provided buffers (`IORING_REGISTER_PBUF_RING`, Linux 5.19): memory a process lends its io_uring, from
//! which the kernel takes one buffer per datagram a multishot receive completes. A completion names the buffer it
//! filled (`io_uring::cqueue::buffer_select`); the buffer is the process's until it is given back.
//!
//! Our own code rather than a crate's: the io-uring crate gives the ring's entry type and the registration call, and
//! nothing on crates.io holds the ring and its buffers without also owning the io_uring and its event loop, which the
//! relay (`server::uring`, reaped beside tokio's reactor) and the bench forwarder each need to own.
//!
//! The memory is allocated once and freed on drop. Drop a `BufRing` only after its io_uring is quiet (no receive
//! that may take a buffer is in flight) or gone; otherwise [`BufRing::leak`] it.

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

/// The buffers and the ring of entries the kernel takes them from.
pub struct BufRing {
    ring: *mut types::BufRingEntry,
    bufs: *mut u8,
    /// Buffers (a power of two, at most 32 768), each `size` bytes, of which the kernel may fill `fill`.
    count: u16,
    size: usize,
    fill: u32,
    /// The next ring slot to fill; published to the kernel through the ring's tail field.
    tail: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes, registers them with `ring` as buffer group `group`, and puts
    /// every one on the ring. The kernel fills at most `fill` bytes of each (room left after it stays the
    /// process's, e.g. for padding written in place).
    pub fn new(ring: &IoUring, count: u16, size: usize, fill: usize, group: u16) -> io::Result<Self> {
        let invalid = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        if !count.is_power_of_two() || count > 32_768 {
            return Err(invalid("the buffer count must be a power of two, at most 32 768"));
        }
        let fill = u32::try_from(fill)
            .ok()
            .filter(|f| *f > 0 && *f as usize <= size)
            .ok_or_else(|| invalid("a buffer's fill must be within its size"))?;
        let (ring_layout, bufs_layout) = layouts(count, size).ok_or_else(|| invalid("buffer ring too large"))?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, bufs) = unsafe { (std::alloc::alloc_zeroed(ring_layout), std::alloc::alloc(bufs_layout)) };
        let mut pool = BufRing {
            ring: entries.cast(),
            bufs,
            count,
            size,
            fill,
            tail: 0,
        };
        if entries.is_null() || bufs.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        // SAFETY: the ring is page-aligned and `count` entries long, and lives until `pool` is dropped, which its
        // owner does only once the io_uring is quiet or gone.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(pool.ring as u64, count, group, 0)
        }?;
        for bid in 0..count {
            pool.give_back(bid);
        }
        Ok(pool)
    }

    /// A ring that owns nothing, to put in the place of one that is leaked.
    pub fn empty() -> Self {
        BufRing {
            ring: std::ptr::null_mut(),
            bufs: std::ptr::null_mut(),
            count: 0,
            size: 0,
            fill: 0,
            tail: 0,
        }
    }

    /// Never frees the memory: for when the kernel may still write into it.
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Puts buffer `bid` back on the ring, for the kernel to fill again. Give back only a buffer a completion
    /// handed over, once.
    pub fn give_back(&mut self, bid: u16) {
        if self.ring.is_null() || bid >= self.count {
            return;
        }
        let mask = self.count - 1;
        // SAFETY: `tail & mask` is within the ring; the kernel reads only the entries behind the published tail, and
        // this one is ahead of it. `bid < count` keeps the buffer inside the allocation.
        unsafe {
            let entry = &mut *self.ring.add(usize::from(self.tail & mask));
            entry.set_addr(self.bufs.add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.fill);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field is a `u16` inside the first entry, which the kernel reads as an atomic.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Buffer `bid` (all `size` bytes), while a completion has handed it over.
    pub fn buf(&mut self, bid: u16) -> &mut [u8] {
        if self.bufs.is_null() || bid >= self.count {
            return &mut [];
        }
        // SAFETY: inside the allocation; the kernel does not touch a buffer it has handed over until it is given
        // back, and `&mut self` makes this the only reference made here.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.add(usize::from(bid) * self.size), self.size) }
    }

    /// Buffer `bid` for reading, while a completion has handed it over; several may be read at once.
    pub fn buf_shared(&self, bid: u16) -> &[u8] {
        if self.bufs.is_null() || bid >= self.count {
            return &[];
        }
        // SAFETY: as for `buf`; `&self` allows only shared references.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.size), self.size) }
    }
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("fill", &self.fill)
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

/// The ring must be page-aligned; the buffers are too, so none straddles more pages than it must.
fn layouts(count: u16, size: usize) -> Option<(Layout, Layout)> {
    let ring = Layout::from_size_align(usize::from(count) * std::mem::size_of::<types::BufRingEntry>(), 4096).ok()?;
    let bufs = Layout::from_size_align(usize::from(count).checked_mul(size)?, 4096).ok()?;
    (ring.size() > 0 && bufs.size() > 0).then_some((ring, bufs))
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.ring.is_null() || self.bufs.is_null() {
            return;
        }
        let Some((ring, bufs)) = layouts(self.count, self.size) else {
            return;
        };
        // SAFETY: allocated in `new` with these layouts; the owner drops this only once the io_uring is quiet.
        unsafe {
            std::alloc::dealloc(self.ring.cast(), ring);
            std::alloc::dealloc(self.bufs, bufs);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_kernel_would() {
        let Ok(ring) = IoUring::new(8) else {
            println!("SKIP: no io_uring here (kernel.io_uring_disabled?)");
            return;
        };
        assert!(BufRing::new(&ring, 3, 64, 64, 0).is_err(), "not a power of two");
        assert!(BufRing::new(&ring, 4, 64, 65, 0).is_err(), "fill past the buffer");
        assert!(BufRing::new(&ring, 4, 64, 0, 0).is_err(), "nothing to fill");
        let mut pool = BufRing::new(&ring, 4, 64, 60, 0).unwrap();
        assert_eq!(pool.buf(3).len(), 64);
        assert!(pool.buf(4).is_empty(), "no buffer past the count");
        pool.give_back(9);
        BufRing::empty().give_back(0);
    }
}
