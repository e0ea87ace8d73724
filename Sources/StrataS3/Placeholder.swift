import CStrataCurl
enum PlaceholderS3 {}  // replaced by the S3 client
