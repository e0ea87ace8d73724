/// The configuration `strata serve` runs when given no file; `config/default.yml` holds the same text
/// (a test keeps the two equal).
public let embeddedDefaultConfiguration = #"""
# Strata's embedded default: `strata serve` with no config file runs exactly this.
# A disk CAS under ~/.cache/strata/cas, an in-memory action cache, instance "", plain gRPC on loopback.
server:
  - !channel
    address: "127.0.0.1:50051"
    insecure-mode: true

storages:
  - !disk-storage &cas-storage
    path: !expand-path ~/.cache/strata/cas

caches:
  - !lru-action-cache &action-cache
    storage: *cas-storage
    max-cached-refs: 100000
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
