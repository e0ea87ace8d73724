/// How the builder reports every problem of a file rather than the first: each item (a top-level key,
/// a channel, connection, storage, cache, instance, service or cleanup entry) is built by `check`,
/// which records the item's first problem and goes on with the next item. An item that uses one that
/// failed (through an alias) stops with a silent follow-on error, so one mistake is reported once.
extension Builder {
    /// Builds one item; its problem, if any, is recorded (a follow-on one is dropped) and nil returned.
    mutating func check<T>(_ build: (inout Builder) throws(ConfigError) -> T) -> T? {
        do {
            return try build(&self)
        } catch {
            record(error)
            return nil
        }
    }

    mutating func record(_ error: ConfigError) {
        if !error.isFollowOn { errors.append(error) }
    }

    /// Builds the shared object of `node` (a storage, cache or connection that aliases may name again),
    /// remembering a failure under `key`: a later use of the same node stops with a follow-on error
    /// instead of reporting the same problem again, or a problem caused by it.
    mutating func once<T>(
        _ node: ConfigNode, key: String? = nil, _ build: (inout Builder) throws(ConfigError) -> T
    ) throws(ConfigError) -> T {
        let key = key ?? node.identity
        guard !failed.contains(key) else { throw node.followOn() }
        do {
            return try build(&self)
        } catch {
            failed.insert(key)
            throw error
        }
    }

    /// A warning for an accepted option that changes nothing in Strata: "FILE:LINE: PATH is ignored: WHY".
    mutating func ignore(_ node: ConfigNode, because reason: String) {
        warnings.append("\(node.file):\(node.keyLine ?? node.line ?? 0): \(node.path) is ignored: \(reason)")
    }
}

extension ConfigNode {
    /// The error of an item that depends on this node, which failed and was reported already.
    func followOn() -> ConfigError {
        ConfigError(file: file, line: line, path: path, message: "depends on an item that failed", isFollowOn: true)
    }
}
