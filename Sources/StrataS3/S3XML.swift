import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// The few S3 XML documents the client reads, flattened: each element's text by its path of names
/// (e.g. `Error/Code`, `ListMultipartUploadsResult/Upload/UploadId`), in document order.
struct S3XMLDocument {
    private(set) var values: [(path: String, text: String)] = []
    private(set) var root: String?

    init?(_ data: Data) {
        guard !data.isEmpty else { return nil }
        let collector = Collector()
        let parser = XMLParser(data: data)
        parser.delegate = collector
        guard parser.parse(), let root = collector.root else { return nil }
        self.root = root
        self.values = collector.values
    }

    func first(_ path: String) -> String? { values.first { $0.path == path }?.text }

    func all(_ path: String) -> [String] { values.filter { $0.path == path }.map(\.text) }

    /// Groups of sibling values under each element at `path`, e.g. each `Upload` of a listing.
    func records(_ path: String) -> [[String: String]] {
        var records: [[String: String]] = []
        let prefix = path + "/"
        var current: [String: String]?
        for (valuePath, text) in values {
            if valuePath == path {
                if let done = current { records.append(done) }
                current = [:]
            } else if valuePath.hasPrefix(prefix) {
                current?[String(valuePath.dropFirst(prefix.count))] = text
            }
        }
        if let done = current { records.append(done) }
        return records
    }

    /// One entry per element, placed when it starts and filled in when it ends.
    private final class Collector: NSObject, XMLParserDelegate {
        var values: [(path: String, text: String)] = []
        var root: String?
        private var stack: [String] = []
        private var texts: [String] = []
        private var pendingRecords: [Int] = []

        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                    qualifiedName: String?, attributes: [String: String] = [:]) {
            if root == nil { root = elementName }
            stack.append(elementName)
            texts.append("")
            // A placeholder for this element's own entry, so it precedes its children in `values`.
            pendingRecords.append(values.count)
            values.append((stack.joined(separator: "/"), ""))
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if !texts.isEmpty { texts[texts.count - 1] += string }
        }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
            let text = texts.removeLast()
            let index = pendingRecords.removeLast()
            values[index].text = text.trimmingCharacters(in: .whitespacesAndNewlines)
            stack.removeLast()
        }
    }
}

/// Builds the small XML request bodies S3 takes.
enum S3XMLBuilder {
    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(character)
            }
        }
        return out
    }

    static func completeMultipartUpload(_ parts: [(number: Int, etag: String)]) -> Data {
        var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for part in parts {
            xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\(escape(part.etag))</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        return Data(xml.utf8)
    }

    static func deleteObjects(_ keys: [String]) -> Data {
        var xml = "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>"
        for key in keys { xml += "<Object><Key>\(escape(key))</Key></Object>" }
        xml += "</Delete>"
        return Data(xml.utf8)
    }
}
