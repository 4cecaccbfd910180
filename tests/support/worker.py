from workers.worker_process import WorkerProcess

__all__ = ["WorkerProcess"]
