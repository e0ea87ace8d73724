import Logging
import StrataCore
import StrataMetrics
import StrataServer

/// One output of `monitoring:` (BuildGrid's section; a list gives several).
public enum MonitoringOutput: Sendable, Hashable {
    /// `endpoint-type: prometheus`: an HTTP listener serving `/metrics`, `/status`, `/healthz`, `/readyz`.
    case prometheus(ListenAddress)
    /// `endpoint-type: udp | socket | file | stdout` with `serialization-format: statsd`.
    case statsD(StatsDEndpoint, StatsDFormat)
}

extension Builder {
    /// `monitoring:` as BuildGrid 0.9.1 reads it (`enabled` defaults to true once the section is there;
    /// `endpoint-type` to stdout; `serialization-format` to statsd; `tag-format` to influx-statsd), plus
    /// Strata's `endpoint-type: prometheus`. A list gives several outputs. BuildGrid's `binary` and
    /// `json` formats are its own protobuf bus messages, which Strata does not write: such an output is
    /// left out with a warning, never written in another format.
    mutating func monitoringOutputs(_ node: ConfigNode) throws(ConfigError) -> [MonitoringOutput] {
        let entries: [ConfigNode]
        if case .sequence = node.node { entries = try node.sequence() } else { entries = [node] }
        var outputs: [MonitoringOutput] = []
        for entry in entries {
            if let output = try monitoringOutput(entry) {
                guard !outputs.contains(output) else { throw entry.error("this output is given twice") }
                outputs.append(output)
            }
        }
        return outputs
    }

    private mutating func monitoringOutput(_ node: ConfigNode) throws(ConfigError) -> MonitoringOutput? {
        let options = try node.mapping(allowed: [
            "enabled", "endpoint-type", "endpoint-location", "serialization-format", "metric-prefix", "tag-format",
            "additional-tags",
        ])
        if let enabled = options["enabled"], try !enabled.bool() { return nil }
        let type = try options["endpoint-type"]?.string() ?? "stdout"
        func location() throws(ConfigError) -> String {
            guard let location = options["endpoint-location"] else {
                throw node.error("endpoint-type: \(type) needs an endpoint-location (\(type == "udp" || type == "prometheus" ? "host:port" : "a path"))")
            }
            return try location.string()
        }
        func hostAndPort() throws(ConfigError) -> (host: String, port: Int) {
            let text = try location()
            guard let address = try? ListenAddress(parsing: text), case .tcp(let host, let port) = address.kind else {
                throw options["endpoint-location"]!.error("endpoint-location \"\(text)\" is not host:port")
            }
            return (host, port)
        }
        if type == "prometheus" {
            for key in ["serialization-format", "metric-prefix", "tag-format", "additional-tags"] where options[key] != nil {
                throw options[key]!.error("\(key) applies to StatsD outputs, not to endpoint-type: prometheus")
            }
            let (host, port) = try hostAndPort()
            return .prometheus(ListenAddress(.tcp(host: host, port: port)))
        }
        let endpoint: StatsDEndpoint
        switch type {
        case "udp":
            let (host, port) = try hostAndPort()
            endpoint = .udp(host: host, port: port)
        case "socket": endpoint = .socket(path: try location())
        case "file": endpoint = .file(path: try location())
        case "stdout": endpoint = .stdout
        default:
            throw (options["endpoint-type"] ?? node).error(
                "unknown endpoint-type \"\(type)\"; expected one of: udp, socket, file, stdout, prometheus")
        }
        let serialization = try options["serialization-format"]?.string() ?? "statsd"
        switch serialization {
        case "statsd": break
        case "binary", "json":
            let at = options["serialization-format"]!
            warnings.append("\(at.file):\(at.line ?? 0): \(at.path): serialization-format: \(serialization) is BuildGrid's own bus format, which Strata does not write: this \(type) output is off; use statsd")
            return nil
        default:
            throw options["serialization-format"]!.error("unknown serialization-format \"\(serialization)\"; expected statsd (or BuildGrid's binary, json)")
        }
        var format = StatsDFormat()
        if let prefix = options["metric-prefix"] { format.prefix = StatsDFormat.prefix(fromConfig: try prefix.string()) }
        if let tagFormatNode = options["tag-format"] {
            let name = try tagFormatNode.string()
            guard let tagFormat = StatsDTagFormat(rawValue: name) else {
                throw tagFormatNode.error("unknown tag-format \"\(name)\"; expected one of: \(StatsDTagFormat.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            format.tagFormat = tagFormat
        }
        if let tagsNode = options["additional-tags"] {
            guard case .mapping(let mapping) = tagsNode.node else { throw tagsNode.error("additional-tags is a mapping of tag names to values") }
            for (key, value) in mapping {
                guard let name = key.string, let text = value.string else {
                    throw tagsNode.error("additional-tags: names and values are strings")
                }
                format.additionalTags[name] = text
            }
        }
        return .statsD(endpoint, format)
    }
}

/// The monitoring a configuration asked for, built when it loads (opening nothing) and run by `strata serve`.
public struct MonitoringSetup: Sendable {
    public let outputs: [MonitoringOutput]
    public let monitoring: Monitoring
    /// What records each RPC (the server's `MetricsInterceptor`).
    public let rpcMetrics: RPCMetrics
    /// Where `/metrics`, `/status`, `/healthz` and `/readyz` are served.
    public var prometheusAddresses: [ListenAddress] {
        outputs.compactMap { if case .prometheus(let address) = $0 { address } else { nil } }
    }
}
