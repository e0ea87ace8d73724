#include "greeting.h"

int main() {
  return Greeting("x") == "hello from x" ? 0 : 1;
}
