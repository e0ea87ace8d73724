import CHiredis
enum PlaceholderRedis {}  // replaced by the Redis client
