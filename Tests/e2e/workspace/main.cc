#include <iostream>

#include "greeting.h"

int main() {
  std::cout << Greeting("strata e2e") << std::endl;
  return 0;
}
