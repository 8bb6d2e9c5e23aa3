"""What the test clusters share: a `with` block that starts the service and always stops it, even when the start
fails halfway (daemons, namespaces and mounts must not outlive a test)."""


class Service:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
