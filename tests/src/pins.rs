//! Foreign maps pinned where xvs expects its own, as damage a test inflicts: created and
//! pinned with bpf(2) directly, so the shapes can be anything the kernel accepts.
use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 27],
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 2],
}

/// Creates a map of this shape and pins it at `path` (which must not exist).
pub fn pin_foreign_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    let create = MapCreate { map_type, key_size, value_size, max_entries, ..Default::default() };
    #[expect(unsafe_code, reason = "bpf(2) has no safe wrapper")]
    // SAFETY: the attribute struct outlives the call; its size is passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &create as *const MapCreate, size_of::<MapCreate>()) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let name = CString::new(path.as_os_str().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let pin = ObjPin { pathname: name.as_ptr() as u64, bpf_fd: fd as u32, ..Default::default() };
    #[expect(unsafe_code, reason = "bpf(2) has no safe wrapper")]
    // SAFETY: as above; `name` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, &pin as *const ObjPin, size_of::<ObjPin>()) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {}", path.display(), std::io::Error::last_os_error());
    #[expect(unsafe_code, reason = "closing the fd bpf(2) returned")]
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe {
        libc::close(fd as i32);
    }
}
