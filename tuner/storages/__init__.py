"""Where trials live: storage URLs, hardened SQLite, PostgreSQL/MySQL, and their faults.

Owns opening a storage from a URL and its settings (:mod:`.storage`), the
hardened SQLite and Core RDB storages, the resilient wrapper that rides out
outages (:mod:`.resilient`, :mod:`.faults`), stale-trial retries
(:mod:`.retries`), the study-wide budget lock, the artifact store and the
clean-up of storage files a failed start created (:mod:`.leftovers`). It may
import :mod:`tuner.space`, :mod:`tuner.common` and :mod:`tuner.errors`; it
never sees a study spec.
"""
