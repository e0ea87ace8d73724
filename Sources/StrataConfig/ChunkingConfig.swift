import StrataChunking
import StrataServer

extension Builder {
    /// `enable-chunking` (BuildGrid's) and `average-chunk-size` (Strata's) on a `!cas`: the FastCDC 2020
    /// chunker of SplitBlob and SpliceBlob, or nil when chunking is off (the default).
    func chunking(_ options: [String: ConfigNode]) throws(ConfigError) -> FastCDC2020? {
        let enabled = try options["enable-chunking"]?.bool() ?? false
        guard let averageNode = options["average-chunk-size"] else {
            return enabled ? FastCDC2020(.recommended) : nil
        }
        guard enabled else {
            throw averageNode.error("average-chunk-size applies to SplitBlob and SpliceBlob: set enable-chunking: true, or remove it")
        }
        let average = try averageNode.size()
        do {
            // The spec's range and derivation: min average/4, max average×4, seed 0 (its recommendation).
            return FastCDC2020(try FastCDC2020Parameters(averageSize: Int(clamping: average)))
        } catch {
            throw averageNode.error("\(error.description), e.g. 512K (the spec's recommendation)")
        }
    }
}
