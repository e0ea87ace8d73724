import StrataConfig
import Testing

/// Checks that `parse` refuses its config with a `ConfigError` at `file:line` whose message contains
/// every fragment: what each config suite's `expectError` does with its own file name and environment.
func expectConfigError(
    file: String, line: Int, _ fragments: [String], sourceLocation: SourceLocation, _ parse: () throws -> Configuration
) {
    do {
        _ = try parse()
        Issue.record("the config was accepted", sourceLocation: sourceLocation)
    } catch let error as ConfigError {
        #expect(error.file == file, "\(error)", sourceLocation: sourceLocation)
        #expect(error.line == line, "\(error)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}
