/*
 * Grammar checks of server values (see include/imap/values.h).
 *
 *   flag           = "\" atom / atom
 *   atom           = 1*ATOM-CHAR
 *   ATOM-CHAR      = <any CHAR except atom-specials>
 *   atom-specials  = "(" / ")" / "{" / SP / CTL / "%" / "*" / DQUOTE / "\" / "]"
 *   date-time      = DQUOTE date-day-fixed "-" date-month "-" date-year
 *                    SP time SP zone DQUOTE
 *   date-day-fixed = (SP DIGIT) / 2DIGIT
 *   time           = 2DIGIT ":" 2DIGIT ":" 2DIGIT
 *   zone           = ("+" / "-") 4DIGIT
 */
#include "imap/values.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/utf7.h"

static bool is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return !strchr("(){%*\"\\]", c);
}

bool imap_flag_valid(const char *s, size_t len)
{
    if (len && s[0] == '\\') {
        s++;
        len--;
    }
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_atom_char((unsigned char)s[i]))
            return false;
    return true;
}

static bool digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

bool imap_date_time_parse(const char *s, size_t len, char out[IMAP_DATE_TIME_LEN + 1])
{
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    char buf[IMAP_DATE_TIME_LEN];
    /* a one-digit day without its space: not the grammar, but harmless */
    if (len == IMAP_DATE_TIME_LEN - 1) {
        buf[0] = ' ';
        memcpy(buf + 1, s, len);
        s = buf;
        len++;
    }
    if (len != IMAP_DATE_TIME_LEN)
        return false;
    unsigned day, year, hh, mm, ss, zh, zm;
    if (s[0] == ' ' ? !digits(s + 1, 1, &day) : !digits(s, 2, &day))
        return false;
    int month = -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(s + 3, months[i], 3) == 0)
            month = i;
    if (s[2] != '-' || month < 0 || s[6] != '-' || !digits(s + 7, 4, &year) || s[11] != ' ' ||
        !digits(s + 12, 2, &hh) || s[14] != ':' || !digits(s + 15, 2, &mm) || s[17] != ':' ||
        !digits(s + 18, 2, &ss) || s[20] != ' ' || (s[21] != '+' && s[21] != '-') ||
        !digits(s + 22, 2, &zh) || !digits(s + 24, 2, &zm))
        return false;
    /* 60: a leap second */
    if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || zh > 23 || zm > 59)
        return false;
    snprintf(out, IMAP_DATE_TIME_LEN + 1, "%02u-%s-%04u %02u:%02u:%02u %c%02u%02u", day,
             months[month], year, hh, mm, ss, s[21], zh, zm);
    return true;
}

const char *imap_mailbox_name_problem(const char *s, size_t len)
{
    if (len == 0)
        return "is empty";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return "contains control characters";
        if (c >= 0x80)
            return "is not 7-bit (modified UTF-7 expected)";
    }
    char *utf8 = utf7_decode(s, len);
    if (!utf8)
        return errno == ENOMEM ? "cannot be checked (out of memory)"
                               : "is not valid modified UTF-7";
    const unsigned char *u = (const unsigned char *)utf8;
    const char *problem = NULL;
    for (size_t i = 0; u[i] && !problem; i++) {
        /* C0 and DEL, or a C1 control (U+0080-U+009F, "\xc2\x80"-"\xc2\x9f") */
        if (u[i] < 0x20 || u[i] == 0x7f || (u[i] == 0xc2 && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f))
            problem = "contains control characters";
    }
    free(utf8);
    return problem;
}

/* "FETCH ITEM 'value' complaint" */
static int fetch_error(char *err, size_t errlen, const char *item, const struct imap_value *v,
                       const char *complaint)
{
    const char *s = "";
    size_t len = 0;
    if (v && !imap_value_string(v, &s, &len))
        s = v->type == IMAP_LIST ? "(...)" : "NIL";
    if (len > 60)
        len = 60;
    char shown[64];
    snprintf(shown, sizeof shown, "%.*s", (int)len, s);
    snprintf(err, errlen, "FETCH %s '%s' %s", item, shown, complaint);
    return -EINVAL;
}

int imap_fetch_parse(const struct imap_value *list, bool partial, struct imap_fetch *f, char *err,
                     size_t errlen)
{
    memset(f, 0, sizeof *f);
    if (!list || list->type != IMAP_LIST) {
        snprintf(err, errlen, "FETCH without an attribute list");
        return -EINVAL;
    }
    size_t n = list->count;
    if (n % 2) {
        if (!partial) {
            snprintf(err, errlen, "FETCH attribute without a value");
            return -EINVAL;
        }
        n--;
    }
    bool seen_uid = false, seen_date = false;
    for (size_t i = 0; i < n; i += 2) {
        const struct imap_value *name = &list->items[i], *v = &list->items[i + 1];
        const char *ns;
        size_t nl;
        if (name->type != IMAP_ATOM || !imap_value_string(name, &ns, &nl)) {
            snprintf(err, errlen, "FETCH attribute name that is not an atom");
            return -EINVAL;
        }
        if (imap_value_is_atom(name, "UID")) {
            uint32_t uid;
            if (seen_uid || !imap_value_u32(v, &uid) || uid == 0)
                return fetch_error(err, errlen, "UID", v, "is not a single UID");
            f->uid = uid;
            seen_uid = true;
        } else if (imap_value_is_atom(name, "MODSEQ")) {
            if (f->has_modseq || v->type != IMAP_LIST || v->count != 1 ||
                !imap_value_u64(&v->items[0], &f->modseq))
                return fetch_error(err, errlen, "MODSEQ", v, "is not a mod-sequence");
            f->has_modseq = true;
        } else if (imap_value_is_atom(name, "FLAGS")) {
            if (f->flags || v->type != IMAP_LIST)
                return fetch_error(err, errlen, "FLAGS", v, "is not a flag list");
            for (size_t k = 0; k < v->count; k++) {
                const struct imap_value *fl = &v->items[k];
                if (fl->type != IMAP_ATOM || !imap_flag_valid(fl->str, fl->len))
                    return fetch_error(err, errlen, "FLAGS", fl, "is not a flag");
            }
            f->flags = v;
        } else if (imap_value_is_atom(name, "INTERNALDATE")) {
            if (seen_date || v->type != IMAP_STRING ||
                !imap_date_time_parse(v->str, v->len, f->date))
                return fetch_error(err, errlen, "INTERNALDATE", v, "is not a date-time");
            f->has_date = seen_date = true;
        } else if (imap_value_is_atom(name, "RFC822.SIZE")) {
            if (f->has_size || !imap_value_u64(v, &f->size))
                return fetch_error(err, errlen, "RFC822.SIZE", v, "is not a number");
            f->has_size = true;
        } else if (imap_value_is_atom(name, "BODY[]")) {
            if (f->body || v->type == IMAP_LIST || v->type == IMAP_ATOM)
                return fetch_error(err, errlen, "BODY[]", v, "is not a string");
            f->body = v;
        } else if (nl > 11 && strncasecmp(ns, "BODY[HEADER", 11) == 0) {
            if (f->header || v->type == IMAP_LIST || v->type == IMAP_ATOM)
                return fetch_error(err, errlen, "BODY[HEADER]", v, "is not a string");
            f->header = v;
        }
    }
    return 0;
}
