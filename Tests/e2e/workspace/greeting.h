#ifndef STRATA_E2E_GREETING_H_
#define STRATA_E2E_GREETING_H_

#include <string>

std::string Greeting(const std::string& name);

#endif  // STRATA_E2E_GREETING_H_
