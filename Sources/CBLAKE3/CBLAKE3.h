#include <strata_blake3/blake3.h>
