//! Serving's prefix tables on the device, known by identity. Each adapter's
//! folded table is an immutable `Arc<[f32]>` on the host; the cache keeps
//! that `Arc` beside the device copy, so a table goes up once while it stays
//! in use instead of once a pass (a bert-base table of prefix 20 is 1.5 MB,
//! and a pass that mixed 8 adapters sent 12 MB). Holding the `Arc` keeps
//! its allocation: no other table can come at the same address while the
//! entry lives, so the address is the identity.

use std::sync::Arc;

use crate::engine::cuda::device::CudaDevice;
use crate::engine::cuda::memory::DevBuf;
use crate::error::Result;

/// The tables kept on the device; past it, the least recently used table
/// that the pass at hand does not need is dropped (an adapter removed from
/// the server leaves at the latest then).
const MAX_TABLES: usize = 64;

#[derive(Default)]
pub struct TableCache {
    entries: Vec<Entry>,
    /// The passes so far: an entry's `used` is the last pass that read it.
    pass: u64,
}

struct Entry {
    table: Arc<[f32]>,
    buf: DevBuf<f32>,
    used: u64,
}

impl TableCache {
    /// The device address of each of `tables` (one pass's), in order,
    /// sending up those that are not held.
    pub fn addresses(&mut self, dev: &CudaDevice, tables: &[Arc<[f32]>]) -> Result<Vec<u64>> {
        self.pass += 1;
        let pass = self.pass;
        let mut out = Vec::with_capacity(tables.len());
        for table in tables {
            if let Some(e) = self
                .entries
                .iter_mut()
                .find(|e| Arc::ptr_eq(&e.table, table))
            {
                e.used = pass;
                out.push(e.buf.ptr);
                continue;
            }
            while self.entries.len() >= MAX_TABLES {
                let Some(oldest) = (0..self.entries.len())
                    .filter(|&i| self.entries[i].used < pass)
                    .min_by_key(|&i| self.entries[i].used)
                else {
                    break;
                };
                self.entries.swap_remove(oldest);
            }
            let mut buf = DevBuf::default();
            buf.upload(dev, table)?;
            out.push(buf.ptr);
            self.entries.push(Entry {
                table: Arc::clone(table),
                buf,
                used: pass,
            });
        }
        Ok(out)
    }
}
