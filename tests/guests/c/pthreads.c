/* A multi-threaded function in C on glibc's pthreads (built by reap-test-support with
 * `cc -O2 -static-pie -pthread`).
 *
 * At start it spawns a pool of worker threads that wait on a condition variable, then
 * reads stdin: its ready point has every worker parked. Each request line `{"n":N}` is
 * answered with figures all threads helped compute: a sum of squares split across the
 * pool (jobs handed over under a mutex, results counted down under another), a counter
 * bumped under a mutex by threads that meet at a pthread barrier, per-thread `__thread`
 * counters, and a thread that spins until another stops it (preemption). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORKERS 4
#define BUMPERS 8

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static uint64_t job_n;          /* the request's N */
static int jobs_pending;        /* parts not yet taken */
static int parts_left;          /* parts not yet finished */
static uint64_t part_sum;       /* sum of finished parts */

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        while (jobs_pending == 0)
            pthread_cond_wait(&queue_cond, &queue_lock);
        int part = --jobs_pending;
        uint64_t n = job_n;
        pthread_mutex_unlock(&queue_lock);
        uint64_t s = 0;
        for (uint64_t i = part; i <= n; i += WORKERS)
            s += i * i;
        pthread_mutex_lock(&queue_lock);
        part_sum += s;
        if (--parts_left == 0)
            pthread_cond_signal(&done_cond);
        pthread_mutex_unlock(&queue_lock);
    }
    return NULL;
}

static pthread_mutex_t counter_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t counter;
static pthread_barrier_t barrier;
static __thread uint64_t local_count;

static void *bumper(void *arg) {
    (void)arg;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&counter_lock);
        counter++;
        pthread_mutex_unlock(&counter_lock);
        local_count++;
    }
    return (void *)(uintptr_t)local_count;
}

static atomic_int stop, started;

static void *spinner(void *arg) {
    (void)arg;
    volatile uint64_t spins = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        spins++;
        atomic_store_explicit(&started, 1, memory_order_relaxed);
    }
    return (void *)(uintptr_t)(spins > 0);
}

int main(void) {
    pthread_t pool[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&pool[i], NULL, worker, NULL) != 0)
            abort();
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        uint64_t n = 0;
        for (char *p = line; *p; p++)
            if (*p >= '0' && *p <= '9')
                n = n * 10 + (uint64_t)(*p - '0');

        pthread_mutex_lock(&queue_lock);
        job_n = n;
        part_sum = 0;
        jobs_pending = WORKERS;
        parts_left = WORKERS;
        pthread_cond_broadcast(&queue_cond);
        while (parts_left > 0)
            pthread_cond_wait(&done_cond, &queue_lock);
        uint64_t sum = part_sum;
        pthread_mutex_unlock(&queue_lock);

        counter = 0;
        pthread_barrier_init(&barrier, NULL, BUMPERS);
        pthread_t bumpers[BUMPERS];
        for (int i = 0; i < BUMPERS; i++)
            pthread_create(&bumpers[i], NULL, bumper, NULL);
        int tls_ok = 1;
        for (int i = 0; i < BUMPERS; i++) {
            void *r;
            pthread_join(bumpers[i], &r);
            tls_ok &= (uintptr_t)r == 1000;
        }
        pthread_barrier_destroy(&barrier);

        /* This thread spins until the new one spins too, then stops it: with one vCPU
         * each needs the other preempted. */
        atomic_store(&stop, 0);
        atomic_store(&started, 0);
        pthread_t spin;
        pthread_create(&spin, NULL, spinner, NULL);
        while (!atomic_load_explicit(&started, memory_order_relaxed))
            ;
        struct timespec ms5 = {0, 5000000};
        nanosleep(&ms5, NULL);
        atomic_store(&stop, 1);
        void *spun;
        pthread_join(spin, &spun);

        printf("{\"n\":%llu,\"sum\":%llu,\"counter\":%llu,\"tls\":%s,\"spun\":%s}\n",
               (unsigned long long)n, (unsigned long long)sum, (unsigned long long)counter,
               tls_ok ? "true" : "false", spun ? "true" : "false");
        fflush(stdout);
    }
    return 0;
}
