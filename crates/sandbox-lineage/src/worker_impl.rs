//! The core-loop worker traits implemented over this crate's boxes and backends.

use std::sync::Arc;

use agentrt_core_loop::LoopError;
use agentrt_core_loop::worker::{
    BoxSessionId, BoxSessionStatus, BoxSpec, Capabilities, CheckpointId, ExecOutcome, ExecRequest,
    OutputChunk, WorkerBackend, WorkerBox,
};
use tokio::sync::mpsc;

use crate::LineageError;
use crate::sandbox::{BubblewrapBackend, LocalDirBackend, SandboxBox};

#[async_trait::async_trait]
impl WorkerBox for SandboxBox {
    fn id(&self) -> &str {
        SandboxBox::id(self)
    }

    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, LoopError> {
        Ok(self.exec_inner(request, output).await?)
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, LoopError> {
        Ok(SandboxBox::read_file(self, path).await?)
    }

    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), LoopError> {
        Ok(SandboxBox::write_file(self, path, contents).await?)
    }

    async fn open_session(&self, name: &str) -> Result<BoxSessionId, LoopError> {
        Ok(SandboxBox::open_session(self, name).await?)
    }

    async fn session_status(
        &self,
        id: &BoxSessionId,
    ) -> Result<Option<BoxSessionStatus>, LoopError> {
        Ok(SandboxBox::session_status(self, id))
    }

    /// Registers the checkpoint with the box's backend so that
    /// [`WorkerBackend::fork`] can find it by id until it is released.
    async fn checkpoint(&self) -> Result<CheckpointId, LoopError> {
        let checkpoint = SandboxBox::checkpoint(self).await?;
        let id = checkpoint.id().clone();
        self.register_checkpoint(checkpoint);
        Ok(id)
    }

    async fn destroy(&self) -> Result<(), LoopError> {
        Ok(SandboxBox::destroy(self).await?)
    }
}

macro_rules! impl_worker_backend {
    ($backend:ty) => {
        #[async_trait::async_trait]
        impl WorkerBackend for $backend {
            async fn capabilities(&self) -> Capabilities {
                self.probe().await.capabilities()
            }

            async fn create(&self, spec: &BoxSpec) -> Result<Arc<dyn WorkerBox>, LoopError> {
                Ok(Arc::new(self.create_box(spec).await?))
            }

            async fn fork(
                &self,
                checkpoint: &CheckpointId,
            ) -> Result<Arc<dyn WorkerBox>, LoopError> {
                let found = self
                    .core()
                    .checkpoints
                    .lock()
                    .map_err(|_| {
                        LoopError::from(LineageError::Unsupported(
                            "checkpoint registry poisoned".into(),
                        ))
                    })?
                    .get(checkpoint)
                    .cloned();
                let Some(found) = found else {
                    return Err(LineageError::Invalid {
                        field: "checkpoint",
                        message: format!("unknown or released checkpoint {checkpoint}"),
                    }
                    .into());
                };
                Ok(Arc::new(self.fork_box(&found).await?))
            }

            async fn release_checkpoint(&self, checkpoint: &CheckpointId) -> Result<(), LoopError> {
                let released = self
                    .core()
                    .checkpoints
                    .lock()
                    .ok()
                    .and_then(|mut c| c.remove(checkpoint));
                drop(released);
                Ok(())
            }
        }
    };
}

impl_worker_backend!(LocalDirBackend);
impl_worker_backend!(BubblewrapBackend);
