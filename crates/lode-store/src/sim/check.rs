//! The invariants, checked against the store's objects directly (not
//! through the turnstile) after every step of a schedule.

use crate::alarm::WATCH_TTL_MS;
use crate::pointer::{ImagePointer, PointerState};
use crate::roots::{RootInfo, RootState};
use futures::TryStreamExt;
use lode_chunk::Manifest;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the checker remembers between steps.
#[derive(Debug, Default)]
pub struct Checker {
    /// Last state seen of each root (`None`: its document is gone).
    roots: BTreeMap<String, Option<RootState>>,
    /// When each root was first seen expired (virtual ms).
    expired_at: BTreeMap<String, u64>,
    /// Decoded manifests by path (manifests never change).
    manifests: HashMap<Path, Option<Manifest>>,
}

async fn get(inner: &InMemory, p: &Path) -> Option<bytes::Bytes> {
    match inner.get(p).await {
        Ok(r) => r.bytes().await.ok(),
        Err(_) => None,
    }
}

async fn keys_under(inner: &InMemory, prefix: &str) -> Vec<Path> {
    let p = Path::from(prefix);
    inner
        .list(Some(&p))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap_or_default()
}

/// A live pointer: tenant, name, manifest path.
pub type LivePointer = (String, String, Path);

impl Checker {
    async fn manifest(&mut self, inner: &InMemory, p: &Path) -> Option<Manifest> {
        if let Some(m) = self.manifests.get(p) {
            return m.clone();
        }
        let m = get(inner, p).await.and_then(|b| Manifest::decode(&b).ok());
        // Only a manifest that exists is cached (a missing one may appear).
        if m.is_some() {
            self.manifests.insert(p.clone(), m.clone());
        }
        m
    }

    /// Root documents now.
    pub async fn roots_now(inner: &InMemory) -> BTreeMap<String, RootInfo> {
        let mut out = BTreeMap::new();
        for p in keys_under(inner, "roots").await {
            let parts: Vec<&str> = p.as_ref().split('/').collect();
            if parts.len() == 3 && parts[2] == "root.json" {
                if let Some(r) = get(inner, &p)
                    .await
                    .and_then(|b| serde_json::from_slice::<RootInfo>(&b).ok())
                {
                    out.insert(r.id.clone(), r);
                }
            }
        }
        out
    }

    /// Live pointers now.
    pub async fn live_pointers(inner: &InMemory) -> Vec<LivePointer> {
        let mut out = Vec::new();
        for p in keys_under(inner, "tenants").await {
            let parts: Vec<&str> = p.as_ref().split('/').collect();
            if parts.len() != 4 || parts[2] != "images" {
                continue;
            }
            let Some(ptr) = get(inner, &p)
                .await
                .and_then(|b| ImagePointer::parse(&b, "").ok())
            else {
                continue;
            };
            if let (PointerState::Live, Some(d)) = (ptr.state, ptr.manifest) {
                let hex = d.trim_start_matches("sha256:");
                out.push((
                    parts[1].to_string(),
                    parts[3].to_string(),
                    Path::from(format!("tenants/{}/manifests/{hex}", parts[1])),
                ));
            }
        }
        out
    }

    /// After a step that changed the store: roots move one way; every live
    /// image's manifest and chunks exist, in a root that is not expired.
    pub async fn check_state(
        &mut self,
        inner: &InMemory,
        now: u64,
        accepted_pins: &BTreeSet<String>,
    ) -> Result<(), String> {
        let roots = Self::roots_now(inner).await;
        for (id, last) in self.roots.iter_mut() {
            match (roots.get(id), *last) {
                (Some(r), None) => {
                    return Err(format!(
                        "root {id} came back as {:?} after it was deleted",
                        r.state
                    ))
                }
                (Some(r), Some(prev)) if r.state < prev => {
                    return Err(format!(
                        "root {id} moved back from {prev:?} to {:?}",
                        r.state
                    ))
                }
                (Some(r), _) => *last = Some(r.state),
                (None, _) => *last = None,
            }
        }
        for (id, r) in &roots {
            self.roots.entry(id.clone()).or_insert(Some(r.state));
            if r.state >= RootState::Expired {
                self.expired_at.entry(id.clone()).or_insert(now);
            }
        }
        for (t, n, mp) in Self::live_pointers(inner).await {
            let Some(m) = self.manifest(inner, &mp).await else {
                return Err(format!("live image {t}/{n}: manifest {mp} is missing"));
            };
            let Some(r) = roots.get(&m.root) else {
                return Err(format!(
                    "live image {t}/{n}: its root {} is deleted",
                    m.root
                ));
            };
            if !r.state.readable() {
                return Err(format!(
                    "live image {t}/{n} is in root {} which is {:?}",
                    m.root, r.state
                ));
            }
            for name in m.names.iter().flatten() {
                let cp = crate::Store::chunk_path(&m.root, name);
                if inner.head(&cp).await.is_err() {
                    return Err(format!("live image {t}/{n} misses chunk {cp}"));
                }
            }
        }
        // A pin Store::pin accepted holds its version for as long as it
        // exists: manifest, root and chunks.
        for (pin, mp) in Self::pins(inner).await {
            if !accepted_pins.contains(&pin) {
                continue;
            }
            let Some(m) = self.manifest(inner, &mp).await else {
                return Err(format!("pinned version {mp} ({pin}) is missing"));
            };
            if !roots.contains_key(&m.root) {
                return Err(format!(
                    "pinned version {mp}: its root {} is deleted",
                    m.root
                ));
            }
            for name in m.names.iter().flatten() {
                let cp = crate::Store::chunk_path(&m.root, name);
                if inner.head(&cp).await.is_err() {
                    return Err(format!("pinned version {mp} misses chunk {cp}"));
                }
            }
        }
        Ok(())
    }

    /// Every pin in the store: (its path, the manifest it names).
    pub async fn pins(inner: &InMemory) -> Vec<(String, Path)> {
        let mut out = Vec::new();
        for p in keys_under(inner, "tenants").await {
            let parts: Vec<&str> = p.as_ref().split('/').collect();
            if let [_, t, "pins", hex, _] = parts.as_slice() {
                out.push((
                    p.to_string(),
                    Path::from(format!("tenants/{t}/manifests/{hex}")),
                ));
            }
        }
        out
    }

    /// Before a delete by `actor` (a collector holding lease `holder`, if
    /// any) is applied.
    pub async fn check_delete(
        &mut self,
        inner: &InMemory,
        path: &Path,
        holder: Option<&str>,
        now: u64,
    ) -> Result<(), String> {
        let parts: Vec<&str> = path.as_ref().split('/').collect();
        let roots = Self::roots_now(inner).await;
        let open_alarms = !keys_under(inner, "alarms").await.is_empty();
        let lease_ok = || async {
            let Some(h) = holder else { return false };
            get(inner, &Path::from("gc/lease.json"))
                .await
                .and_then(|b| serde_json::from_slice::<crate::lease::LeaseDoc>(&b).ok())
                .is_some_and(|d| d.holder == h && d.expires_ms > now)
        };
        match parts.as_slice() {
            ["roots", r, "chunks", ..] => {
                if let Some(doc) = roots.get(*r) {
                    if doc.state != RootState::Expired {
                        return Err(format!(
                            "chunk {path} deleted while its root is {:?}",
                            doc.state
                        ));
                    }
                }
                if open_alarms {
                    return Err(format!("chunk {path} deleted while an alarm is open"));
                }
                if !lease_ok().await {
                    return Err(format!(
                        "chunk {path} deleted by an actor without a valid lease ({holder:?})"
                    ));
                }
            }
            ["roots", r, "root.json"] => {
                if !keys_under(inner, &format!("roots/{r}/chunks"))
                    .await
                    .is_empty()
                {
                    return Err(format!("root {r} deleted before all its chunks"));
                }
                if !lease_ok().await {
                    return Err(format!("root {r} deleted without a valid lease"));
                }
            }
            ["tenants", t, "manifests", hex] if holder.is_some() => {
                for (pt, pn, mp) in Self::live_pointers(inner).await {
                    if pt == *t && mp.as_ref().ends_with(hex) {
                        return Err(format!("manifest {path} of live image {pt}/{pn} deleted"));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After a pointer write that landed: a live pointer names a manifest in
    /// a root that is active (closing or not).
    pub async fn check_publish(&mut self, inner: &InMemory, path: &Path) -> Result<(), String> {
        let Some(b) = get(inner, path).await else {
            return Ok(());
        };
        let Ok(p) = ImagePointer::parse(&b, "") else {
            return Err(format!("unparsable pointer written at {path}"));
        };
        let Some(d) = p.live_manifest() else {
            return Ok(());
        };
        let t = path
            .as_ref()
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mp = Path::from(format!(
            "tenants/{t}/manifests/{}",
            d.trim_start_matches("sha256:")
        ));
        let Some(m) = self.manifest(inner, &mp).await else {
            return Err(format!("pointer {path} published before its manifest"));
        };
        let roots = Self::roots_now(inner).await;
        match roots.get(&m.root) {
            Some(r) if r.state == RootState::Active => Ok(()),
            // A fence rewrites a pointer without changing its claim: that is
            // not a publish (the manifest was published before).
            Some(_) if p.fence > 0 => Ok(()),
            other => Err(format!(
                "pointer {path} published into root {} which is {:?}",
                m.root,
                other.map(|r| r.state)
            )),
        }
    }

    /// A chunk read by an agent from `root`, sent at `now`: if the root had
    /// then been expired for longer than the watch's cache time, an alarm exists.
    pub async fn check_agent_read(
        &self,
        inner: &InMemory,
        root: &str,
        now: u64,
    ) -> Result<(), String> {
        let Some(t) = self.expired_at.get(root) else {
            return Ok(());
        };
        if now.saturating_sub(*t) <= WATCH_TTL_MS {
            return Ok(());
        }
        let open = keys_under(inner, &format!("alarms/{root}")).await;
        let acked = keys_under(inner, &format!("alarms-acked/{root}")).await;
        if open.is_empty() && acked.is_empty() {
            return Err(format!(
                "an agent read root {root}, expired since {t}, at {now} and no alarm was recorded"
            ));
        }
        Ok(())
    }

    /// After the store went quiet and GC ran its passes: the store holds
    /// exactly the live set.
    pub async fn check_converged(&mut self, inner: &InMemory) -> Result<(), String> {
        let roots = Self::roots_now(inner).await;
        let live = Self::live_pointers(inner).await;
        let mut want_chunks = BTreeSet::new();
        let mut want_manifests = BTreeSet::new();
        let mut want_roots = BTreeSet::new();
        if let Some((id, _)) = roots.iter().rev().find(|(_, r)| r.takes_pushes()) {
            want_roots.insert(id.clone());
        }
        for (t, n, mp) in &live {
            let m = self
                .manifest(inner, mp)
                .await
                .ok_or_else(|| format!("live image {t}/{n} has no manifest"))?;
            want_manifests.insert(mp.to_string());
            want_roots.insert(m.root.clone());
            for name in m.names.iter().flatten() {
                want_chunks.insert(crate::Store::chunk_path(&m.root, name).to_string());
            }
        }
        // Pinned versions are live too (a pin left by a crash whose
        // version is gone holds nothing). A pinned version is not migrated:
        // its root is kept whole, with chunks no live manifest names.
        let mut pinned_roots = BTreeSet::new();
        for (_, mp) in Self::pins(inner).await {
            if let Some(m) = self.manifest(inner, &mp).await {
                want_manifests.insert(mp.to_string());
                want_roots.insert(m.root.clone());
                pinned_roots.insert(format!("roots/{}/", m.root));
                for name in m.names.iter().flatten() {
                    want_chunks.insert(crate::Store::chunk_path(&m.root, name).to_string());
                }
            }
        }
        let have: BTreeSet<String> = keys_under(inner, "roots")
            .await
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        let have_chunks: BTreeSet<String> = have
            .iter()
            .filter(|p| p.contains("/chunks/"))
            .filter(|p| {
                want_chunks.contains(*p) || !pinned_roots.iter().any(|r| p.starts_with(r.as_str()))
            })
            .cloned()
            .collect();
        if have_chunks != want_chunks {
            let extra: Vec<_> = have_chunks.difference(&want_chunks).take(3).collect();
            let missing: Vec<_> = want_chunks.difference(&have_chunks).take(3).collect();
            return Err(format!(
                "not converged: chunks extra {extra:?}, missing {missing:?}"
            ));
        }
        let have_roots: BTreeSet<String> = roots.keys().cloned().collect();
        if have_roots != want_roots {
            return Err(format!(
                "not converged: roots {have_roots:?}, live set needs {want_roots:?}"
            ));
        }
        let others: Vec<&String> = have
            .iter()
            .filter(|p| {
                !p.contains("/chunks/")
                    && !p.ends_with("/root.json")
                    && p.as_str() != "roots/GENESIS"
            })
            .collect();
        if !others.is_empty() {
            return Err(format!("not converged: left under roots/: {others:?}"));
        }
        let have_manifests: BTreeSet<String> = keys_under(inner, "tenants")
            .await
            .into_iter()
            .map(|p| p.to_string())
            .filter(|p| p.contains("/manifests/"))
            .collect();
        if have_manifests != want_manifests {
            return Err(format!(
                "not converged: {} manifests stored, {} live",
                have_manifests.len(),
                want_manifests.len()
            ));
        }
        if !keys_under(inner, "alarms").await.is_empty() {
            return Err("not converged: open alarms".into());
        }
        Ok(())
    }
}
