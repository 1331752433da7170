#include "errors.h"

#include <string.h>
#include <uv.h>

const char *err_str(int code)
{
    switch (code) {
    case ERR_PROTOCOL:
        return "protocol error";
    case ERR_TLS:
        return "TLS error";
    case ERR_AUTH:
        return "authentication failed";
    case ERR_BYE:
        return "server closed the session";
    case ERR_NO:
        return "command refused by the server";
    case ERR_BAD:
        return "command rejected by the server as invalid";
    case ERR_EOF:
        return "connection closed by the server";
    case ERR_CONFIG:
        return "configuration error";
    case ERR_UNSUPPORTED:
        return "unsupported by the server";
    case ERR_TOO_BIG:
        return "response too large";
    case ERR_DB:
        return "database error";
    case ERR_STATE_MISMATCH:
        return "state database inconsistent with the server";
    case ERR_SOCKS:
        return "SOCKS5 proxy error";
    default:
        break;
    }
    if (code < 0 && code > -4096)
        return uv_strerror(code);
    return "unknown error";
}
