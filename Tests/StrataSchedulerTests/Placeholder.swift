// Placeholder so the target builds; replaced by the suite's first real file.
