/*
 * Descriptions of the error codes (see errors.h).
 */
#include "errors.h"

#include <string.h>
#include <uv.h>

const char *err_str(int code)
{
    switch (code) {
#define ERR_CASE(name, text)                                                                       \
    case name:                                                                                     \
        return text;
        ERR_LIST(ERR_CASE)
#undef ERR_CASE
    default:
        break;
    }
    if (code < 0 && code > -4096)
        return uv_strerror(code);
    return "unknown error";
}
