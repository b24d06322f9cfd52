//! BPF_MAP_LOOKUP_BATCH / UPDATE_BATCH / DELETE_BATCH (Linux 5.6+): a whole map read, or many
//! entries written or deleted, in a few bpf(2) calls instead of one per entry. aya has no batch
//! API, so these are the raw commands on the maps' descriptors. A kernel or map type without
//! them answers EINVAL or ENOTSUPP: that is `Unsupported`, and the callers go entry by entry.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd},
};

use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray},
    Pod,
};

use super::{is_missing, DataplaneError};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (a map type without batch operations).
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s batch member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("the kernel has no batch operations for this map")]
    Unsupported,
    #[error("entry {index} of the batch")]
    Entry { index: usize, source: io::Error },
    #[error("the kernel returned fewer entries than the array holds")]
    Short,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Runs one batch command; Err carries errno, and `attr.count` what the kernel did.
fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> Result<(), io::Error> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the kernel zero-fills the rest
    // and reads/writes only the buffers its pointers name, which the callers size for `count`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// A value as the kernel lays it out: per-CPU maps hold one 8-byte-aligned copy per CPU.
pub fn value_size<V>(per_cpu: Option<usize>) -> usize {
    match per_cpu {
        Some(cpus) => size_of::<V>().next_multiple_of(8) * cpus,
        None => size_of::<V>(),
    }
}

/// Every entry of the map: keys, and values as raw bytes of `value_size` each (see
/// [`value_size`]), in calls of growing size.
pub fn lookup_all<K: Pod>(fd: BorrowedFd<'_>, value_size: usize) -> Result<(Vec<K>, Vec<u8>), BatchError> {
    let mut chunk = 4096;
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<u8> = Vec::new();
    // The position token: a bucket (u32) for hash maps, a key for arrays.
    let token_len = size_of::<K>().max(8);
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut first = true;
    loop {
        let n = keys.len();
        // SAFETY: K is Pod: every bit pattern, zeroes included, is a valid K.
        keys.resize(n + chunk, unsafe { std::mem::zeroed() });
        values.resize((n + chunk) * value_size, 0);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys[n..].as_mut_ptr() as u64,
            values: values[n * value_size..].as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(chunk);
        keys.truncate(n + got);
        values.truncate((n + got) * value_size);
        match result {
            Ok(()) => {}
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values)),
            // One hash bucket holds more entries than `chunk`: ask for more at a time.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) if first && unsupported(&e) => return Err(BatchError::Unsupported),
            Err(e) => return Err(e.into()),
        }
        first = false;
        chunk = (chunk * 2).min(1 << 16);
        std::mem::swap(&mut token_in, &mut token_out);
    }
}

/// Writes `keys[i]` = `values[i]` (raw, `value_size` bytes each) with BPF_ANY, in one call.
pub fn update<K: Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[u8], value_size: usize) -> Result<(), BatchError> {
    debug_assert_eq!(values.len(), keys.len() * value_size);
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr { keys: keys.as_ptr() as u64, values: values.as_ptr() as u64, count: keys.len() as u32, map_fd: fd.as_raw_fd() as u32, ..BatchAttr::default() };
    match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(()) => Ok(()),
        Err(e) if attr.count == 0 && unsupported(&e) => Err(BatchError::Unsupported),
        Err(e) => Err(BatchError::Entry { index: attr.count as usize, source: e }),
    }
}

/// Deletes `keys`; keys already gone are skipped. Returns how many were deleted.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<usize, BatchError> {
    let (mut at, mut deleted) = (0, 0);
    while at < keys.len() {
        let mut attr = BatchAttr { keys: keys[at..].as_ptr() as u64, count: (keys.len() - at) as u32, map_fd: fd.as_raw_fd() as u32, ..BatchAttr::default() };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(keys.len() - at);
        deleted += done;
        at += done;
        match result {
            Ok(()) => return Ok(deleted),
            // The kernel stops at a key that is not there: skip it, go on after it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) if at == 0 && unsupported(&e) => return Err(BatchError::Unsupported),
            Err(e) => return Err(BatchError::Entry { index: at, source: e }),
        }
    }
    Ok(deleted)
}

/// One value per entry, for maps that are not per-CPU.
pub fn single_values<V: Pod>(raw: &[u8]) -> impl Iterator<Item = V> + '_ {
    raw.chunks_exact(size_of::<V>()).map(|c| {
        // SAFETY: V is Pod and the chunk holds exactly size_of::<V>() bytes.
        unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<V>()) }
    })
}

/// Values as raw bytes, for `update`.
pub fn raw<V: Pod>(values: &[V]) -> &[u8] {
    // SAFETY: the slice covers exactly the values' memory; the shared types are Pod with
    // explicit padding, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// Every entry of a hash map: batched where the kernel can, else one lookup per entry (an
/// entry that goes between the two calls of an entry-by-entry walk is skipped).
pub fn hash_entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, name: &'static str) -> Result<Vec<(K, V)>, DataplaneError> {
    match lookup_all::<K>(map.map().fd().as_fd(), size_of::<V>()) {
        Ok((keys, raw)) => Ok(keys.into_iter().zip(single_values::<V>(&raw)).collect()),
        Err(BatchError::Unsupported) => map
            .iter()
            .filter(|item| !matches!(item, Err(e) if is_missing(e)))
            .collect::<Result<_, _>>()
            .map_err(DataplaneError::map(name, "read")),
        Err(source) => Err(DataplaneError::Batch { map: name, op: "read", source }),
    }
}

/// Deletes `keys` from a hash map: batched where the kernel can, else one call per key. Keys
/// already gone (an LRU eviction) are skipped. Returns how many were deleted.
pub fn hash_delete<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, name: &'static str, keys: &[K]) -> Result<usize, DataplaneError> {
    match delete(map.map().fd().as_fd(), keys) {
        Ok(deleted) => Ok(deleted),
        Err(BatchError::Unsupported) => {
            let mut deleted = 0;
            for key in keys {
                match map.remove(key) {
                    Ok(()) => deleted += 1,
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(DataplaneError::map(name, "delete")(e)),
                }
            }
            Ok(deleted)
        }
        Err(source) => Err(DataplaneError::Batch { map: name, op: "delete", source }),
    }
}

/// Zeroes the values of `ids` in a per-CPU array, a bounded buffer at a time.
pub fn zero_per_cpu<V: Pod>(map: &PerCpuArray<MapData, V>, name: &'static str, ids: std::ops::RangeInclusive<u32>) -> Result<(), DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Batch { map: name, op: "count CPUs for", source: BatchError::Io(e) })?;
    let size = value_size::<V>(Some(cpus));
    // At most about 1 MiB of zeroes per call, whatever the CPU count.
    let chunk = ((1 << 20) / size.max(1)).max(1) as u32;
    let zeros = vec![0u8; chunk as usize * size];
    let fd = map.map().fd().as_fd();
    let mut start = *ids.start();
    while start <= *ids.end() {
        let end = start.saturating_add(chunk - 1).min(*ids.end());
        let keys: Vec<u32> = (start..=end).collect();
        update(fd, &keys, &zeros[..keys.len() * size], size).map_err(|source| DataplaneError::Batch { map: name, op: "zero", source })?;
        if end == u32::MAX {
            break;
        }
        start = end + 1;
    }
    Ok(())
}

/// Every value of an array, by index.
pub fn array_values<V: Pod>(map: &Array<MapData, V>, name: &'static str) -> Result<Vec<V>, DataplaneError> {
    match lookup_all::<u32>(map.map().fd().as_fd(), size_of::<V>()) {
        Ok((keys, raw)) => {
            let mut out = vec![None; map.len() as usize];
            for (i, v) in keys.into_iter().zip(single_values::<V>(&raw)) {
                if let Some(slot) = out.get_mut(i as usize) {
                    *slot = Some(v);
                }
            }
            out.into_iter().map(|v| v.ok_or(DataplaneError::Batch { map: name, op: "read", source: BatchError::Short })).collect()
        }
        Err(BatchError::Unsupported) => (0..map.len()).map(|i| map.get(&i, 0).map_err(DataplaneError::map(name, "read"))).collect(),
        Err(source) => Err(DataplaneError::Batch { map: name, op: "read", source }),
    }
}
