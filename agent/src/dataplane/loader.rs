//! Loads the eBPF object, hands out its programs (loaded into the kernel on first use) and
//! attaches them to interfaces.
use std::path::{Path, PathBuf};

use aya::{
    maps::ProgramArray,
    programs::{tc, CgroupSock, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

use xvs_common::{
    maglev::{JUMP_INGRESS, JUMP_MH_WALK, JUMP_UNMASQ},
    ALL_MAPS,
};

use super::{capacity::Capacity, error::DataplaneError, maps::Maps, pin::map_pin};

pub const PROG_XDP: &str = "xvs_xdp_ingress";
pub const PROG_TC_INGRESS: &str = "xvs_tc_ingress";
pub const PROG_TC_EGRESS: &str = "xvs_tc_egress";
/// The bench's structural floors (ebpf/src/floor.rs), never attached: parse + one flow hit,
/// and parse + a flow miss + the two inserts.
pub const PROG_FLOOR_FLOW_HIT: &str = "xvs_floor_flow_hit";
pub const PROG_FLOOR_FLOW_INSERT: &str = "xvs_floor_flow_insert";
/// mh's walkers (ebpf/src/maglev.rs), reached from the ingress programs through their jump
/// tables, which `xdp()` and `tc()` fill when they load an ingress program.
const PROG_XDP_MH_WALK: &str = "xvs_xdp_mh_walk";
const PROG_TC_MH_WALK: &str = "xvs_tc_mh_walk";
/// The ingress half of masquerading (ebpf/src/snat.rs), reached the same way.
const PROG_XDP_UNMASQ: &str = "xvs_xdp_unmasq";
const PROG_TC_UNMASQ: &str = "xvs_tc_unmasq";
const MAP_XDP_JUMP: &str = "XVS_XDP_JUMP";
const MAP_TC_JUMP: &str = "XVS_TC_JUMP";

/// Installed location of the object (container image, packages).
const INSTALLED_OBJECT: &str = "/usr/lib/xvs/xvs-ebpf.o";

/// Where the eBPF object comes from.
pub enum ObjectSource {
    File(PathBuf),
    Embedded(&'static [u8]),
}

impl ObjectSource {
    /// The one place that decides which object to load, in this order: `flag` (--bpf-object),
    /// `$XVS_BPF_OBJECT`, the object built into this binary (feature `embed-bpf`), the installed
    /// path, the workspace build output of `cargo xtask build-ebpf`.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        if let Some(path) = flag.or_else(|| std::env::var_os("XVS_BPF_OBJECT").map(PathBuf::from)) {
            return Self::File(path);
        }
        if let Some(bytes) = embedded_object() {
            return Self::Embedded(bytes);
        }
        if Path::new(INSTALLED_OBJECT).exists() {
            return Self::File(PathBuf::from(INSTALLED_OBJECT));
        }
        Self::File(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bpfel-unknown-none/release/xvs-ebpf"))
    }

    pub fn load(&self) -> Result<Dataplane, DataplaneError> {
        self.load_with(None, Capacity::default())
    }

    /// Loads the object with maps of `capacity`, pinned under `pin_dir` (reusing maps already
    /// pinned there, whatever their size), or unpinned when `None`.
    pub fn load_with(&self, pin_dir: Option<&Path>, capacity: Capacity) -> Result<Dataplane, DataplaneError> {
        match self {
            Self::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|source| DataplaneError::ObjectMissing { path: path.clone(), source })?;
                Dataplane::load_bytes_with(&bytes, path, pin_dir, capacity)
            }
            Self::Embedded(bytes) => Dataplane::load_bytes_with(bytes, Path::new("<embedded>"), pin_dir, capacity),
        }
    }

    /// Names the object for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Embedded(bytes) => format!("built into this binary ({} bytes)", bytes.len()),
        }
    }
}

/// The eBPF object compiled into this binary (feature `embed-bpf`), if any.
fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(feature = "embed-bpf")]
    {
        Some(include_bytes!(env!("XVS_EMBED_BPF_OBJECT")))
    }
    #[cfg(not(feature = "embed-bpf"))]
    {
        None
    }
}

/// A loaded datapath: its programs and typed maps. Dropping it detaches whatever it attached
/// (pinning for restarts is the agent's job).
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    /// Whether the XDP and the TC jump tables point at this load's programs.
    jumps_filled: (bool, bool),
}

impl Dataplane {
    pub fn load(path: &Path) -> Result<Self, DataplaneError> {
        ObjectSource::File(path.to_owned()).load()
    }

    /// Loads an object already in memory (`path` only names it in errors).
    pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<Self, DataplaneError> {
        Self::load_bytes_with(bytes, path, None, Capacity::default())
    }

    fn load_bytes_with(bytes: &[u8], path: &Path, pin_dir: Option<&Path>, capacity: Capacity) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => ALL_MAPS.iter().map(|&name| (name, map_pin(dir, name))).collect(),
            None => Vec::new(),
        };
        let pinned_size = |name: &'static str| {
            let (_, path) = pins.iter().find(|(n, _)| *n == name)?;
            aya::maps::MapData::from_pin(path).ok()?.info().ok().map(|i| i.max_entries())
        };
        capacity.apply(&mut loader, &pinned_size);
        for (name, pin) in &pins {
            loader.map_pin_path(name, pin.as_path());
        }
        // Only maps that were pinned before this load can be from another build.
        let preexisting: Vec<&str> = pins.iter().filter(|(_, pin)| pin.exists()).map(|(name, _)| *name).collect();
        if let Some(dir) = pin_dir {
            // Before anything is loaded: a foreign or older map is named here, not by the verifier.
            for (name, path) in pins.iter().filter(|(_, p)| p.exists()) {
                super::layout::check_pinned(name, path, dir)?;
            }
        }
        if let Some(dir) = pin_dir
            && !preexisting.is_empty()
        {
            // A datapath was pinned here, but not all of it: say what starts empty.
            for (name, _) in pins.iter().filter(|(name, _)| !preexisting.contains(name)) {
                tracing::warn!(map = name, dir = %dir.display(), "map not pinned (removed while no agent ran, or new in this version): created empty");
            }
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|source| DataplaneError::Load { path: path.to_owned(), source: Box::new(source) })?;
        let mut maps = Maps::take(&mut ebpf).map_err(|e| match (e, pin_dir) {
            (DataplaneError::Map { map, source, .. }, Some(dir))
                if preexisting.contains(&map)
                    && matches!(*source, aya::maps::MapError::InvalidKeySize { .. } | aya::maps::MapError::InvalidValueSize { .. }) =>
            {
                DataplaneError::PinnedLayout { dir: dir.to_owned(), map, source }
            }
            (e, _) => e,
        })?;
        maps.stamp()?;
        Ok(Self { ebpf, maps, jumps_filled: (false, false) })
    }

    /// The XDP program, loaded into the kernel with its mh walker.
    pub fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        if !self.jumps_filled.0 {
            self.program::<Xdp>(PROG_XDP_MH_WALK)?;
            self.program::<Xdp>(PROG_XDP_UNMASQ)?;
            self.program::<Xdp>(PROG_XDP)?;
            self.fill_jumps(MAP_XDP_JUMP, [PROG_XDP_MH_WALK, PROG_XDP, PROG_XDP_UNMASQ])?;
            self.jumps_filled.0 = true;
        }
        self.program::<Xdp>(PROG_XDP)
    }

    /// A structural floor program (`PROG_FLOOR_*`), loaded, for the bench to run.
    pub fn floor(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        self.program::<Xdp>(name)
    }

    /// A TC program (`PROG_TC_INGRESS` or `PROG_TC_EGRESS`), loaded into the kernel (the
    /// ingress one with its mh walker).
    pub fn tc(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DataplaneError> {
        if name == PROG_TC_INGRESS && !self.jumps_filled.1 {
            self.program::<SchedClassifier>(PROG_TC_MH_WALK)?;
            self.program::<SchedClassifier>(PROG_TC_UNMASQ)?;
            self.program::<SchedClassifier>(PROG_TC_INGRESS)?;
            self.fill_jumps(MAP_TC_JUMP, [PROG_TC_MH_WALK, PROG_TC_INGRESS, PROG_TC_UNMASQ])?;
            self.jumps_filled.1 = true;
        }
        self.program::<SchedClassifier>(name)
    }

    /// Points jump table `map` at the walker, back at the ingress program and at the
    /// unmasquerade program (all loaded), in that order.
    fn fill_jumps(&mut self, map: &'static str, [walker, ingress, unmasq]: [&'static str; 3]) -> Result<(), DataplaneError> {
        let fd_of = |ebpf: &Ebpf, name: &'static str| -> Result<aya::programs::ProgramFd, DataplaneError> {
            let fd = ebpf.program(name).ok_or(DataplaneError::MissingProgram(name))?.fd();
            let fd = fd.and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from));
            fd.map_err(|source| DataplaneError::Program { program: name, op: "take its fd for the jump table".into(), source: Box::new(source) })
        };
        let (walker_fd, ingress_fd, unmasq_fd) = (fd_of(&self.ebpf, walker)?, fd_of(&self.ebpf, ingress)?, fd_of(&self.ebpf, unmasq)?);
        let failed = |source| DataplaneError::Map { map, op: "fill the jump table", source: Box::new(source) };
        let table = self.ebpf.map_mut(map).ok_or(DataplaneError::MissingMap(map))?;
        let mut table = ProgramArray::try_from(table).map_err(failed)?;
        table.set(JUMP_MH_WALK, &walker_fd, 0).map_err(failed)?;
        table.set(JUMP_INGRESS, &ingress_fd, 0).map_err(failed)?;
        table.set(JUMP_UNMASQ, &unmasq_fd, 0).map_err(failed)
    }

    pub(super) fn program<T>(&mut self, name: &'static str) -> Result<&mut T, DataplaneError>
    where
        for<'a> &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
        T: Loadable,
    {
        let program = self.ebpf.program_mut(name).ok_or(DataplaneError::MissingProgram(name))?;
        let program: &mut T = program.try_into().map_err(|source| DataplaneError::Program {
            program: name,
            op: "type check".into(),
            source: Box::new(source),
        })?;
        if !program.is_loaded() {
            program.load_program().map_err(|source| DataplaneError::Program {
                program: name,
                op: "load (verifier)".into(),
                source: Box::new(source),
            })?;
        }
        Ok(program)
    }

    /// Attaches the XDP program to `iface`.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        self.xdp()?.attach(iface, mode).map_err(|source| DataplaneError::Program {
            program: PROG_XDP,
            op: format!("attach to {iface} in {mode:?} mode (try another --xdp-mode, or --attach tc)"),
            source: Box::new(source),
        })?;
        Ok(())
    }

    /// Attaches a TC program to `iface` (adding the clsact qdisc if missing).
    pub fn attach_tc(&mut self, iface: &str, name: &'static str, kind: TcAttachType) -> Result<(), DataplaneError> {
        // Already present is fine; any real problem shows up in the attach below.
        let _ = tc::qdisc_add_clsact(iface);
        self.tc(name)?.attach(iface, kind).map_err(|source| DataplaneError::Program {
            program: name,
            op: format!("attach to {iface} {kind:?}"),
            source: Box::new(source),
        })?;
        Ok(())
    }
}

/// The program types' "is it loaded / load it" pair, so `program()` serves them all.
pub(super) trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

/// Every program type loads the same way: aya gives each its own `load`.
macro_rules! loadable {
    ($($program:ty),*) => {$(
        impl Loadable for $program {
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
            fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
                self.load()
            }
        }
    )*};
}

loadable!(Xdp, SchedClassifier, CgroupSockAddr, CgroupSock);
