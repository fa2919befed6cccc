"""Container health checks that need no curl in the image.

    python healthcheck.py http URL   # exit 0 when URL answers 2xx
    python healthcheck.py redis      # exit 0 when HEXZ_REDIS_URL answers PING

Celery workers use ``celery inspect ping`` instead (see the Dockerfiles); this covers the
servers, Flower and beat, which is no worker and so cannot answer a ping.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_S = 5.0


def check_http(url: str) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url} answered {response.status}")


def check_redis() -> None:
    import redis

    from hexz_tasks.settings import Settings

    url = Settings.from_env().redis_url
    if not url:
        raise RuntimeError("HEXZ_REDIS_URL is not set")
    redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S).ping()


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["http", url]:
                check_http(url)
            case ["redis"]:
                check_redis()
            case _:
                print("usage: healthcheck.py http URL | redis", file=sys.stderr)
                return 2
    except Exception as e:  # any failure means unhealthy; say why in `docker inspect`
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
