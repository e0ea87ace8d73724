import PostgresNIO
enum PlaceholderSQL {}  // replaced by the SQL store
