/* The shared TLS session cache (`ssl_session_cache shared:NAME:SIZE`): sessions by id and the zone's ticket
 * keys in one shared anonymous mapping, made by the master before it forks its workers (as nginx's shared
 * zones are), under a process-shared robust mutex. Plain C, no Python: the handshake callbacks in _io.c
 * use it directly. Rules in _session_zone.c. */

#ifndef MAILGATE_SESSION_ZONE_H
#define MAILGATE_SESSION_ZONE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ZONE_MAX_SESSION_SIZE 8192 /* nginx's NGX_SSL_MAX_SESSION_SIZE: larger sessions are not cached */
#define ZONE_MAX_ID_SIZE 32
#define ZONE_BLOCK_SIZE 256 /* what an ordinary session uses up: about 4000 a megabyte, as in nginx */
#define ZONE_KEY_MATERIAL 80 /* name(16) + HMAC(32) + AES(32): the layout of an 80-byte key file */

typedef struct SessionZone SessionZone;

typedef struct {
    int64_t expire;
    unsigned char material[ZONE_KEY_MATERIAL];
} ZoneTicketKey;

enum {
    ZONE_STORED = 1,
    ZONE_REFUSED = 0,     /* too large to cache (as nginx refuses it), or empty */
    ZONE_FULL = -1,       /* no room even after evicting the oldest: warn (first failure this second) */
    ZONE_FULL_QUIET = -2, /* the same, already warned about this second */
    ZONE_BROKEN = -3,     /* the lock cannot be taken */
};

/* A zone of `size` bytes of sessions (size / ZONE_BLOCK_SIZE blocks); NULL with errno set on failure. */
SessionZone *session_zone_create(size_t size, uint64_t hash_seed);
void session_zone_destroy(SessionZone *zone);

int session_zone_store(SessionZone *zone, const unsigned char *id, size_t id_length, const unsigned char *der,
                       size_t der_length, time_t expire, time_t now);
/* Copies an unexpired session's DER to `out` (ZONE_MAX_SESSION_SIZE bytes) and returns its length; 0 when
 * there is none (an expired one is removed). */
size_t session_zone_fetch(SessionZone *zone, const unsigned char *id, size_t id_length, unsigned char *out,
                          time_t now);
void session_zone_remove(SessionZone *zone, const unsigned char *id, size_t id_length);
size_t session_zone_count(SessionZone *zone);

/* nginx's ngx_ssl_rotate_ticket_keys on the zone: out[0] encrypts, out[1] still decrypts. `fresh` is two
 * keys' worth of random material for the keys a rotation may need. 0, or -1 when the lock fails. */
int session_zone_rotate_keys(SessionZone *zone, time_t now, long timeout,
                             const unsigned char fresh[2][ZONE_KEY_MATERIAL], ZoneTicketKey out[2]);

#endif
