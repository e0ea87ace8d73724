#ifndef STRATA_CURL_H
#define STRATA_CURL_H
// Fixed-signature wrappers around libcurl's variadic calls, which Swift cannot call directly.
#include <curl/curl.h>

typedef size_t (*strata_curl_data_callback)(char *buffer, size_t size, size_t count, void *context);

CURLcode strata_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode strata_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode strata_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode strata_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode strata_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value);
CURLcode strata_curl_setopt_data_callback(CURL *handle, CURLoption option, strata_curl_data_callback callback);
typedef int (*strata_curl_progress_callback)(void *context, curl_off_t download_total, curl_off_t downloaded,
                                             curl_off_t upload_total, curl_off_t uploaded);
CURLcode strata_curl_setopt_progress_callback(CURL *handle, strata_curl_progress_callback callback);
/// curl_global_init(CURL_GLOBAL_DEFAULT): the flag is a macro expression Swift does not import.
CURLcode strata_curl_global_init(void);
CURLcode strata_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode strata_curl_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value);

#endif
