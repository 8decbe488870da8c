/* The shared TLS session cache: nginx's shared zone (§4.8 of the spec) as one anonymous shared mapping.
 *
 * The mapping is made before the master forks, so every worker of a generation (and of the next, while the
 * zone keeps its name and size) sees the same memory: no file, no reopening after fork(), no permissions to
 * give a worker that dropped its privileges. A robust process-shared mutex guards it: a worker killed while
 * holding it leaves the sessions possibly half-written, so the next holder empties them and goes on.
 *
 * Sessions live in fixed blocks of ZONE_BLOCK_SIZE bytes: an entry is a chain of blocks, the first holding
 * its id, expiry, links and the start of its DER (an ordinary session fits in one, as nginx charges about
 * 256 bytes for one). Entries are found through a hash of the id (seeded per zone: ids come from clients on
 * lookup) and kept on a queue in insertion order, which lookups do not change. Each insertion first drops up
 * to two expired entries from the old end; when there is still no room it drops the oldest entry (expired or
 * not, plus up to two expired ones after it) and tries once more, as nginx's ngx_ssl_new_session does. */

#include "_session_zone.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

typedef struct {
    uint32_t next_block; /* the entry's next block, or the free list's next; 0 for none */
    uint32_t hash_next;  /* the next entry in the same bucket */
    uint32_t older, newer;
    int64_t expire;
    uint32_t der_length, id_length;
    unsigned char id[ZONE_MAX_ID_SIZE];
} EntryHead;

#define FIRST_BLOCK_DATA (ZONE_BLOCK_SIZE - sizeof(EntryHead))
#define NEXT_BLOCK_DATA (ZONE_BLOCK_SIZE - sizeof(uint32_t))

struct SessionZone {
    pthread_mutex_t lock;
    size_t mapped;
    size_t blocks_offset;
    uint64_t hash_seed;
    uint32_t block_count, bucket_count; /* bucket_count is a power of two */
    uint32_t free_list;                 /* blocks freed, linked by next_block */
    uint32_t never_used;                /* the first block never handed out (blocks are numbered from 1) */
    uint32_t free_blocks, entries;
    uint32_t oldest, newest;
    int64_t fail_time; /* when a store last failed: nginx warns once a second */
    int keys_made;
    ZoneTicketKey keys[3]; /* current, previous, next */
    uint32_t buckets[];
};

static unsigned char *
block_at(SessionZone *zone, uint32_t number)
{
    return (unsigned char *)zone + zone->blocks_offset + (size_t)(number - 1) * ZONE_BLOCK_SIZE;
}

static EntryHead *
head_at(SessionZone *zone, uint32_t number)
{
    return (EntryHead *)block_at(zone, number);
}

static uint32_t *
next_of(SessionZone *zone, uint32_t number)
{
    return (uint32_t *)block_at(zone, number); /* next_block is every block's first field */
}

static uint32_t
bucket_of(const SessionZone *zone, const unsigned char *id, size_t id_length)
{
    uint64_t hash = zone->hash_seed ^ 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < id_length; i++)
        hash = (hash ^ id[i]) * 0x100000001b3ULL;
    hash ^= hash >> 29;
    return (uint32_t)hash & (zone->bucket_count - 1);
}

static size_t
blocks_for(size_t der_length)
{
    if (der_length <= FIRST_BLOCK_DATA)
        return 1;
    return 1 + (der_length - FIRST_BLOCK_DATA + NEXT_BLOCK_DATA - 1) / NEXT_BLOCK_DATA;
}

static void
clear_sessions(SessionZone *zone)
{
    memset(zone->buckets, 0, zone->bucket_count * sizeof zone->buckets[0]);
    zone->free_list = 0;
    zone->never_used = 1;
    zone->free_blocks = zone->block_count;
    zone->entries = 0;
    zone->oldest = zone->newest = 0;
}

static int
zone_lock(SessionZone *zone)
{
    int status = pthread_mutex_lock(&zone->lock);
    if (status == EOWNERDEAD) {
        clear_sessions(zone); /* its holder died mid-update */
        pthread_mutex_consistent(&zone->lock);
        return 0;
    }
    return status;
}

static void
zone_unlock(SessionZone *zone)
{
    pthread_mutex_unlock(&zone->lock);
}

SessionZone *
session_zone_create(size_t size, uint64_t hash_seed)
{
    size_t blocks = size / ZONE_BLOCK_SIZE;
    if (blocks > UINT32_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    uint32_t buckets = 8;
    while (buckets < blocks / 2)
        buckets *= 2;
    size_t header = offsetof(SessionZone, buckets) + buckets * sizeof(uint32_t);
    header = (header + 63) & ~(size_t)63;
    size_t mapped = header + blocks * ZONE_BLOCK_SIZE;
    /* Anonymous memory is zeroed and only the pages written are ever backed. */
    void *memory = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED)
        return NULL;
    SessionZone *zone = memory;
    pthread_mutexattr_t attributes;
    int status = pthread_mutexattr_init(&attributes);
    if (status == 0) {
        pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
        status = pthread_mutex_init(&zone->lock, &attributes);
        pthread_mutexattr_destroy(&attributes);
    }
    if (status != 0) {
        munmap(memory, mapped);
        errno = status;
        return NULL;
    }
    zone->mapped = mapped;
    zone->blocks_offset = header;
    zone->hash_seed = hash_seed;
    zone->block_count = (uint32_t)blocks;
    zone->bucket_count = buckets;
    /* the buckets are zero already: writing them would back every page of the table at once */
    zone->never_used = 1;
    zone->free_blocks = zone->block_count;
    return zone;
}

void
session_zone_destroy(SessionZone *zone)
{
    /* Only this process's view goes: the workers forked with it keep theirs. */
    munmap(zone, zone->mapped);
}

static uint32_t
find_locked(SessionZone *zone, const unsigned char *id, size_t id_length, uint32_t **link)
{
    uint32_t *at = &zone->buckets[bucket_of(zone, id, id_length)];
    while (*at != 0) {
        EntryHead *head = head_at(zone, *at);
        if (head->id_length == id_length && memcmp(head->id, id, id_length) == 0) {
            if (link != NULL)
                *link = at;
            return *at;
        }
        at = &head->hash_next;
    }
    return 0;
}

static void
unlink_locked(SessionZone *zone, uint32_t number, uint32_t *link)
{
    EntryHead *head = head_at(zone, number);
    *link = head->hash_next;
    if (head->older != 0)
        head_at(zone, head->older)->newer = head->newer;
    else
        zone->oldest = head->newer;
    if (head->newer != 0)
        head_at(zone, head->newer)->older = head->older;
    else
        zone->newest = head->older;
    while (number != 0) {
        uint32_t next = *next_of(zone, number);
        *next_of(zone, number) = zone->free_list;
        zone->free_list = number;
        zone->free_blocks++;
        number = next;
    }
    zone->entries--;
}

static void
remove_locked(SessionZone *zone, const unsigned char *id, size_t id_length)
{
    uint32_t *link;
    uint32_t number = find_locked(zone, id, id_length, &link);
    if (number != 0)
        unlink_locked(zone, number, link);
}

/* nginx's ngx_ssl_expire_sessions: n = 1 drops up to two expired entries, n = 0 the oldest first. */
static void
expire_locked(SessionZone *zone, time_t now, int n)
{
    while (n < 3 && zone->oldest != 0) {
        EntryHead *oldest = head_at(zone, zone->oldest);
        if (n++ != 0 && oldest->expire > now)
            return;
        remove_locked(zone, oldest->id, oldest->id_length);
    }
}

static uint32_t
take_block_locked(SessionZone *zone)
{
    uint32_t number;
    if (zone->free_list != 0) {
        number = zone->free_list;
        zone->free_list = *next_of(zone, number);
    } else {
        number = zone->never_used++;
    }
    zone->free_blocks--;
    *next_of(zone, number) = 0;
    return number;
}

int
session_zone_store(SessionZone *zone, const unsigned char *id, size_t id_length, const unsigned char *der,
                   size_t der_length, time_t expire, time_t now)
{
    if (der_length == 0 || der_length > ZONE_MAX_SESSION_SIZE || id_length == 0 || id_length > ZONE_MAX_ID_SIZE)
        return ZONE_REFUSED;
    size_t needed = blocks_for(der_length);
    if (zone_lock(zone) != 0)
        return ZONE_BROKEN;
    remove_locked(zone, id, id_length);
    expire_locked(zone, now, 1);
    if (zone->free_blocks < needed) {
        expire_locked(zone, now, 0);
        if (zone->free_blocks < needed) {
            int warn = zone->fail_time != now;
            zone->fail_time = now;
            zone_unlock(zone);
            return warn ? ZONE_FULL : ZONE_FULL_QUIET;
        }
    }
    uint32_t first = take_block_locked(zone);
    EntryHead *head = head_at(zone, first);
    head->expire = expire;
    head->der_length = (uint32_t)der_length;
    head->id_length = (uint32_t)id_length;
    memcpy(head->id, id, id_length);
    size_t part = der_length < FIRST_BLOCK_DATA ? der_length : FIRST_BLOCK_DATA;
    memcpy(block_at(zone, first) + sizeof(EntryHead), der, part);
    size_t done = part;
    uint32_t last = first;
    while (done < der_length) {
        uint32_t number = take_block_locked(zone);
        *next_of(zone, last) = number;
        part = der_length - done < NEXT_BLOCK_DATA ? der_length - done : NEXT_BLOCK_DATA;
        memcpy(block_at(zone, number) + sizeof(uint32_t), der + done, part);
        done += part;
        last = number;
    }
    uint32_t *bucket = &zone->buckets[bucket_of(zone, id, id_length)];
    head->hash_next = *bucket;
    *bucket = first;
    head->older = zone->newest;
    head->newer = 0;
    if (zone->newest != 0)
        head_at(zone, zone->newest)->newer = first;
    else
        zone->oldest = first;
    zone->newest = first;
    zone->entries++;
    zone_unlock(zone);
    return ZONE_STORED;
}

size_t
session_zone_fetch(SessionZone *zone, const unsigned char *id, size_t id_length, unsigned char *out, time_t now)
{
    if (id_length > ZONE_MAX_ID_SIZE || zone_lock(zone) != 0)
        return 0;
    uint32_t *link;
    uint32_t number = find_locked(zone, id, id_length, &link);
    size_t length = 0;
    if (number != 0 && head_at(zone, number)->expire <= now) {
        unlink_locked(zone, number, link);
    } else if (number != 0) {
        length = head_at(zone, number)->der_length;
        size_t part = length < FIRST_BLOCK_DATA ? length : FIRST_BLOCK_DATA;
        memcpy(out, block_at(zone, number) + sizeof(EntryHead), part);
        size_t done = part;
        for (uint32_t next = *next_of(zone, number); next != 0 && done < length; next = *next_of(zone, next)) {
            part = length - done < NEXT_BLOCK_DATA ? length - done : NEXT_BLOCK_DATA;
            memcpy(out + done, block_at(zone, next) + sizeof(uint32_t), part);
            done += part;
        }
    }
    zone_unlock(zone);
    return length;
}

void
session_zone_remove(SessionZone *zone, const unsigned char *id, size_t id_length)
{
    if (id_length > ZONE_MAX_ID_SIZE || zone_lock(zone) != 0)
        return;
    remove_locked(zone, id, id_length);
    zone_unlock(zone);
}

size_t
session_zone_count(SessionZone *zone)
{
    if (zone_lock(zone) != 0)
        return 0;
    size_t entries = zone->entries;
    zone_unlock(zone);
    return entries;
}

int
session_zone_rotate_keys(SessionZone *zone, time_t now, long timeout,
                         const unsigned char fresh[2][ZONE_KEY_MATERIAL], ZoneTicketKey out[2])
{
    if (zone_lock(zone) != 0)
        return -1;
    ZoneTicketKey *keys = zone->keys;
    int64_t expire = (int64_t)now + timeout;
    if (!zone->keys_made) {
        keys[0].expire = expire;
        memcpy(keys[0].material, fresh[0], ZONE_KEY_MATERIAL);
        memset(&keys[1], 0, sizeof keys[1]);
        keys[2] = keys[0];
        zone->keys_made = 1;
    }
    if (keys[1].expire < now) {
        keys[1] = keys[0];
        keys[0] = keys[2];
        keys[2].expire = 0;
        memcpy(keys[2].material, fresh[1], ZONE_KEY_MATERIAL);
    }
    if (expire > keys[0].expire)
        keys[0].expire = expire;
    out[0] = keys[0];
    out[1] = keys[1];
    zone_unlock(zone);
    return 0;
}
