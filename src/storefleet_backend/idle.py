"""A stand-in store backend that starts and runs but never answers: for testing deadlines
and cancellation of deploys (`STOREFLEET_PROCESS_BACKEND_MODULE=storefleet_backend.idle`)."""

import signal
import sys
import time


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
