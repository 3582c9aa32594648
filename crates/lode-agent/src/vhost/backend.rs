//! The vhost-user protocol of one frontend connection: features, guest
//! memory, the vring set-up messages, the configuration space and the
//! in-flight region. Messages are parsed by rust-vmm's `vhost` crate; this
//! handler runs on the connection's protocol thread.

use super::device::{device_features, protocol_features, MAX_QUEUE_SIZE};
use super::inflight::InflightRegion;
use super::queue::{Device, GuestMemoryMmap};
use std::fs::File;
use std::sync::Arc;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// A frontend's address of a guest memory region.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// The protocol state of one frontend connection.
#[derive(Debug)]
pub(crate) struct Frontend {
    dev: Arc<Device>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
    mappings: Vec<Mapping>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::ReqHandlerError(std::io::Error::other(e.to_string()))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Frontend {
    pub(crate) fn new(dev: Arc<Device>) -> Frontend {
        Frontend {
            dev,
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
            mappings: Vec::new(),
        }
    }

    fn va_to_gpa(&self, va: u64) -> Result<u64> {
        self.mappings
            .iter()
            .find(|m| va >= m.vmm_addr && va - m.vmm_addr < m.size)
            .map(|m| va - m.vmm_addr + m.gpa)
            .ok_or(Error::InvalidParam)
    }

    fn only_queue(index: u32) -> Result<()> {
        if index == 0 {
            Ok(())
        } else {
            Err(Error::InvalidParam)
        }
    }
}

impl VhostUserBackendReqHandlerMut for Frontend {
    fn set_owner(&mut self) -> Result<()> {
        if self.owned {
            return Err(Error::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.dev.stop();
        let mut ring = lock(&self.dev.ring);
        ring.enabled = false;
        ring.queue.reset();
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(device_features(self.dev.read_only))
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !device_features(self.dev.read_only) != 0 {
            return Err(Error::InvalidParam);
        }
        self.acked_features = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        {
            let mut ring = lock(&self.dev.ring);
            ring.event_idx = event_idx;
            ring.queue.set_event_idx(event_idx);
            // Without protocol features the rings are enabled at once.
            if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
                ring.enabled = true;
            }
        }
        self.dev.maybe_start();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(Error::InvalidOperation("postcopy is not supported"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let r = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(Error::InvalidParam)?;
            mappings.push(Mapping {
                vmm_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
            regions.push(r);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(internal)?;
        self.dev.set_memory(mem);
        self.mappings = mappings;
        self.dev.maybe_start();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        Self::only_queue(index)?;
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) {
            return Err(Error::InvalidParam);
        }
        lock(&self.dev.ring).queue.set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        Self::only_queue(index)?;
        let (d, u, a) = (
            self.va_to_gpa(descriptor)?,
            self.va_to_gpa(used)?,
            self.va_to_gpa(available)?,
        );
        let mut ring = lock(&self.dev.ring);
        let q = &mut ring.queue;
        q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
        q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
        q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
        drop(ring);
        self.dev.maybe_start();
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        Self::only_queue(index)?;
        lock(&self.dev.ring).queue.set_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        Self::only_queue(index)?;
        // Stop the ring: every request popped so far completes first.
        self.dev.stop();
        let mut ring = lock(&self.dev.ring);
        ring.kick = None;
        ring.call = None;
        Ok(VhostUserVringState::new(
            index,
            u32::from(ring.queue.next_avail()),
        ))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        Self::only_queue(u32::from(index))?;
        // A new kick while the ring runs: restart the worker on it.
        self.dev.stop();
        lock(&self.dev.ring).kick = fd;
        self.dev.maybe_start();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        Self::only_queue(u32::from(index))?;
        lock(&self.dev.ring).call = fd.map(Arc::new);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        Self::only_queue(u32::from(index))
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(1)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        Self::only_queue(index)?;
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(Error::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        if enable {
            lock(&self.dev.ring).enabled = true;
            self.dev.maybe_start();
        } else {
            self.dev.stop();
            lock(&self.dev.ring).enabled = false;
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        let (o, n) = (offset as usize, size as usize);
        match o.checked_add(n) {
            Some(end) if end <= self.dev.config.len() => Ok(self.dev.config[o..end].to_vec()),
            _ => Err(Error::InvalidParam),
        }
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<()> {
        Err(Error::InvalidOperation(
            "the configuration space is read-only",
        ))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(Error::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        if inflight.queue_size == 0
            || inflight.queue_size > MAX_QUEUE_SIZE
            || inflight.num_queues != 1
        {
            return Err(Error::InvalidParam);
        }
        let (region, file, size) =
            InflightRegion::create(inflight.num_queues, inflight.queue_size).map_err(internal)?;
        *lock(&self.dev.inflight) = Some(Arc::new(region));
        Ok((
            VhostUserInflight::new(size, 0, inflight.num_queues, inflight.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> Result<()> {
        if inflight.queue_size > MAX_QUEUE_SIZE || inflight.num_queues != 1 {
            return Err(Error::InvalidParam);
        }
        let region = InflightRegion::map(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(internal)?;
        *lock(&self.dev.inflight) = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(Error::InvalidOperation("memory slots are not supported"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(Error::InvalidOperation("memory slots are not supported"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(Error::InvalidOperation("memory slots are not supported"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(Error::InvalidOperation("migration is not supported"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InvalidOperation("migration is not supported"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(Error::InvalidOperation("dirty logging is not supported"))
    }
}
