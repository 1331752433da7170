/*
 * The one way a value gets into a command line. A template names the
 * type of every value it inserts, and each type has an encoder that
 * either writes the value as the grammar wants it (quoting what needs
 * quoting) or refuses it: nothing is pasted as received, so a value taken
 * from one server can never become a second command, an extra argument or
 * a literal on the other.
 *
 * Directives:
 *   %a  text written by our own code (command names, option lists,
 *       base64): inserted as is, refused if it holds CR, LF or NUL
 *   %s  astring: an atom, else a quoted string; refused if it holds CR,
 *       LF, NUL or 8-bit bytes (which would need a literal)
 *   %m  mailbox name: as %s; also refused if it holds other control
 *       characters
 *   %P  LIST pattern (list-mailbox): as %m, always written as a quoted
 *       string (the wildcards % and * are not atom characters)
 *   %F  flag list: flags (imap/values.h) separated by single spaces,
 *       possibly none
 *   %D  date-time without quotes (imap/values.h): written quoted, in the
 *       canonical form
 *   %S  sequence-set: nz-numbers, ranges "a:b" and "*", comma-separated
 *   %u  uint32_t, %U uint64_t, %% a percent sign
 *
 * The whole template is encoded before anything is written: a refused
 * value leaves the buffer as it was.
 */
#ifndef INTERIMAP_IMAP_COMMAND_H
#define INTERIMAP_IMAP_COMMAND_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* A growable command text. data is NUL-terminated (NULL while empty). */
struct imap_cmdbuf {
    char *data;
    size_t len, cap;
};

void imap_cmdbuf_fini(struct imap_cmdbuf *b);

/* Appends the encoded template. Returns 0, -ENOMEM, or -EINVAL with err
 * saying which value was refused and why. */
int imap_cmdbuf_vappend(struct imap_cmdbuf *b, char *err, size_t errlen, const char *fmt,
                        va_list ap);
int imap_cmdbuf_append(struct imap_cmdbuf *b, char *err, size_t errlen, const char *fmt, ...);

/* Whether s is a sequence-set as %S accepts it. */
bool imap_sequence_set_valid(const char *s, size_t len);

#endif
