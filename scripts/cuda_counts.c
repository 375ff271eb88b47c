// A CUPTI injection library that counts every CUDA driver and runtime API call of a
// process (kernel launches, synchronisations, blocking copies, allocations, event
// records...), for the host-overhead profile of a training step on a GPU without Nsight
// Systems. Built by scripts/build-cuda.sh into target/cuda/libcuda_counts.so; used as
//     CUDA_INJECTION64_PATH=target/cuda/libcuda_counts.so CUDA_COUNTS_OUT=counts.json
//         meshcast benchmark-graph-format --device cuda ...
// The driver loads it at cuInit; at exit it writes one JSON object
//     {"driver": {"cuLaunchKernel": N, ...}, "runtime": {"cudaLaunchKernel": N, ...}}
// (calls counted on entry; runtime calls that go through the driver count in both).
// Two runs with different numbers of timed steps give the counts per step by
// difference (scripts/gpu-measure.sh, part `step`).
// With CUDA_COUNTS_KERNELS=1 it also sums every kernel's executions and GPU time
// (CUPTI's concurrent-kernel activity records, which do not serialise kernels), by
// kernel name: "kernels": {"name": [executions, nanoseconds], ...}.
#include <cupti.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DRIVER_IDS CUPTI_DRIVER_TRACE_CBID_SIZE
#define RUNTIME_IDS CUPTI_RUNTIME_TRACE_CBID_SIZE

static atomic_ullong driver_calls[DRIVER_IDS];
static const char* driver_names[DRIVER_IDS];
static atomic_ullong runtime_calls[RUNTIME_IDS];
static const char* runtime_names[RUNTIME_IDS];
static CUpti_SubscriberHandle subscriber;

static void CUPTIAPI on_call(void* user, CUpti_CallbackDomain domain, CUpti_CallbackId id,
                             const void* data) {
  (void)user;
  const CUpti_CallbackData* call = (const CUpti_CallbackData*)data;
  if (call->callbackSite != CUPTI_API_ENTER) return;
  if (domain == CUPTI_CB_DOMAIN_DRIVER_API && id < DRIVER_IDS) {
    driver_names[id] = call->functionName;
    atomic_fetch_add_explicit(&driver_calls[id], 1, memory_order_relaxed);
  } else if (domain == CUPTI_CB_DOMAIN_RUNTIME_API && id < RUNTIME_IDS) {
    runtime_names[id] = call->functionName;
    atomic_fetch_add_explicit(&runtime_calls[id], 1, memory_order_relaxed);
  }
}

#define MAX_KERNELS 4096
typedef struct {
  char* name;
  unsigned long long count, ns;
} KernelTotal;
static KernelTotal kernels[MAX_KERNELS];
static pthread_mutex_t kernels_lock = PTHREAD_MUTEX_INITIALIZER;
static int timing_kernels;

// Adds one execution of `name` taking `ns` (open addressing on the name's hash; a full
// table drops further names).
static void add_kernel(const char* name, unsigned long long ns) {
  unsigned long hash = 5381;
  for (const char* c = name; *c; c++) hash = hash * 33 + (unsigned char)*c;
  for (int i = 0; i < MAX_KERNELS; i++) {
    KernelTotal* k = &kernels[(hash + i) % MAX_KERNELS];
    if (k->name == NULL) {
      k->name = strdup(name);
      k->count = 1;
      k->ns = ns;
      return;
    }
    if (strcmp(k->name, name) == 0) {
      k->count++;
      k->ns += ns;
      return;
    }
  }
}

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 8 << 20;
  *buffer = aligned_alloc(8, *size);
  *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t* buffer,
                                      size_t size, size_t valid) {
  (void)context;
  (void)stream;
  (void)size;
  CUpti_Activity* record = NULL;
  pthread_mutex_lock(&kernels_lock);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const CUpti_ActivityKernel10* k = (const CUpti_ActivityKernel10*)record;
      add_kernel(k->name ? k->name : "?", k->end - k->start);
    }
  }
  pthread_mutex_unlock(&kernels_lock);
  free(buffer);
}

// `"name": [count, ns]` for every kernel seen; quotes and backslashes in names dropped.
static void write_kernels(FILE* out) {
  fprintf(out, ", \"kernels\": {");
  int first = 1;
  for (int i = 0; i < MAX_KERNELS; i++) {
    if (kernels[i].name == NULL) continue;
    fprintf(out, "%s\"", first ? "" : ", ");
    for (const char* c = kernels[i].name; *c; c++)
      if (*c != '"' && *c != '\\') fputc(*c, out);
    fprintf(out, "\": [%llu, %llu]", kernels[i].count, kernels[i].ns);
    first = 0;
  }
  fprintf(out, "}");
}

static void write_table(FILE* out, const char* key, atomic_ullong* calls, const char** names,
                        int ids) {
  fprintf(out, "\"%s\": {", key);
  int first = 1;
  for (int i = 0; i < ids; i++) {
    unsigned long long n = atomic_load(&calls[i]);
    if (n == 0 || names[i] == NULL) continue;
    fprintf(out, "%s\"%s\": %llu", first ? "" : ", ", names[i], n);
    first = 0;
  }
  fprintf(out, "}");
}

static void write_counts(void) {
  if (timing_kernels) cuptiActivityFlushAll(1);
  cuptiUnsubscribe(subscriber);
  const char* path = getenv("CUDA_COUNTS_OUT");
  FILE* out = path ? fopen(path, "w") : NULL;
  if (out == NULL) out = stderr;
  fprintf(out, "{");
  write_table(out, "driver", driver_calls, driver_names, DRIVER_IDS);
  fprintf(out, ", ");
  write_table(out, "runtime", runtime_calls, runtime_names, RUNTIME_IDS);
  if (timing_kernels) {
    pthread_mutex_lock(&kernels_lock);
    write_kernels(out);
    pthread_mutex_unlock(&kernels_lock);
  }
  fprintf(out, "}\n");
  if (out != stderr) fclose(out);
}

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
  if (cuptiSubscribe(&subscriber, (CUpti_CallbackFunc)on_call, NULL) != CUPTI_SUCCESS ||
      cuptiEnableDomain(1, subscriber, CUPTI_CB_DOMAIN_DRIVER_API) != CUPTI_SUCCESS ||
      cuptiEnableDomain(1, subscriber, CUPTI_CB_DOMAIN_RUNTIME_API) != CUPTI_SUCCESS) {
    fprintf(stderr, "cuda_counts: CUPTI refused the subscription: nothing counted\n");
    return 0;
  }
  const char* timing = getenv("CUDA_COUNTS_KERNELS");
  if (timing != NULL && strcmp(timing, "0") != 0) {
    timing_kernels =
        cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) == CUPTI_SUCCESS &&
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) == CUPTI_SUCCESS;
    if (!timing_kernels) fprintf(stderr, "cuda_counts: CUPTI refused kernel timing\n");
  }
  atexit(write_counts);
  return 1;
}
