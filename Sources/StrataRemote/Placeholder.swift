import StrataAPI
enum PlaceholderRemote {}  // replaced by the remote store
