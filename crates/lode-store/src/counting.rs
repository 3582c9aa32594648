//! Counts the requests made through a store: what one GC pass costs.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Requests made, by kind.
#[derive(Debug, Default)]
pub struct RequestCounter {
    gets: AtomicU64,
    heads: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
    listed: AtomicU64,
    deletes: AtomicU64,
    copies: AtomicU64,
}

/// A snapshot of a [`RequestCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// GETs (whole or ranged).
    pub gets: u64,
    /// HEADs.
    pub heads: u64,
    /// PUTs (conditional or not).
    pub puts: u64,
    /// Listing calls (each may fetch several pages).
    pub lists: u64,
    /// Objects and prefixes returned by listings (one page per 1,000 on S3).
    pub listed: u64,
    /// Objects deleted (S3 batches up to 1,000 per request).
    pub deletes: u64,
    /// Server-side copies.
    pub copies: u64,
}

impl RequestCounts {
    /// Requests in total, counting listings and deletes by page (1,000).
    pub fn requests(&self) -> u64 {
        self.gets
            + self.heads
            + self.puts
            + self.lists.max(self.listed.div_ceil(1000))
            + self.deletes.div_ceil(1000)
            + self.copies
    }
}

impl RequestCounter {
    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            gets: l(&self.gets),
            heads: l(&self.heads),
            puts: l(&self.puts),
            lists: l(&self.lists),
            listed: l(&self.listed),
            deletes: l(&self.deletes),
            copies: l(&self.copies),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// An object store that counts the requests made through it.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn ObjectStore>,
    counter: Arc<RequestCounter>,
}

impl Counting {
    /// Wraps `inner`; the counts go to `counter`.
    pub fn new(inner: Arc<dyn ObjectStore>, counter: Arc<RequestCounter>) -> Self {
        Counting { inner, counter }
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        bump(&self.counter.puts);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        bump(&self.counter.puts);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        bump(if options.head {
            &self.counter.heads
        } else {
            &self.counter.gets
        });
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let c = self.counter.clone();
        self.inner.delete_stream(
            locations
                .inspect(move |p| {
                    if p.is_ok() {
                        bump(&c.deletes)
                    }
                })
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        bump(&self.counter.lists);
        let c = self.counter.clone();
        self.inner
            .list(prefix)
            .inspect(move |_| bump(&c.listed))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        bump(&self.counter.lists);
        let r = self.inner.list_with_delimiter(prefix).await?;
        self.counter.listed.fetch_add(
            (r.objects.len() + r.common_prefixes.len()) as u64,
            Ordering::Relaxed,
        );
        Ok(r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        bump(&self.counter.copies);
        self.inner.copy_opts(from, to, options).await
    }
}
