/// The configuration `strata serve` runs when given no file; `config/default.yml` holds the same text
/// (a test keeps the two equal).
public let embeddedDefaultConfiguration = #"""
# Strata's embedded default: `strata serve` with no config file runs exactly this.
# Everything under ~/.cache/strata, so nothing is lost on restart: a disk CAS that may use half of the
# space it could have (free space plus what it holds; computed at start-up, printed in the log) and
# evicts the least recently used blobs past it, and a disk action cache of at most 1G, also evicting
# the least recently used. Instance "", plain gRPC on loopback.
server:
  - !channel
    address: "127.0.0.1:50051"
    insecure-mode: true

storages:
  - !disk-storage &cas-storage
    path: !expand-path ~/.cache/strata/cas
    max-size: 50%free
    evict: lru

caches:
  - !disk-action-cache &action-cache
    path: !expand-path ~/.cache/strata/action-cache
    max-size: 1G
    storage: *cas-storage
    allow-updates: true
    cache-failed-actions: true

instances:
  - name: ""
    services:
      - !cas
        storage: *cas-storage
      - !bytestream
        storage: *cas-storage
      - !action-cache
        cache: *action-cache

"""#
