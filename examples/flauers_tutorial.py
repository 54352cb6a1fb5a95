"""flauers' introductory tutorial notebook, as a script running on ``qfault.compat.flauers``.

The code cells are the tutorial's, in order, with only their import lines changed
(``import flauers`` -> ``from qfault.compat import flauers``, ``import flauers.torch`` ->
``import qfault.compat.flauers.torch``). The other deviations, each marked ``# DEVIATION``:

- data: scikit-learn's 8x8 digits (``qfault.data``) upsampled to 28x28 replace the MNIST
  download; the campaign's dataset holds 400 test images (a multiple of the batch size);
- model: the tutorial's ``LeNet``, trained for a few seconds on those digits and kept in
  ``<workdir>/best_model.pt``, replaces ``torch.load("best_model")``;
- no plotting (the sample-grid cell is skipped);
- ``--faults N`` caps the campaign; state and CSV files live under ``--workdir`` (the script
  changes into it); notebook cells that only displayed a value print it; the cell that shows
  the CastingError catches it.

Usage: ``python examples/flauers_tutorial.py --faults 3 --workdir /tmp/flauers_run``
(re-running it resumes the campaign where it stopped).
"""

# DEVIATION: command-line options and the digits/LeNet stand-ins for MNIST and "best_model"
import argparse
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--faults", type=int, default=None, help="inject at most this many faults (default: Leveugle's count)")
parser.add_argument("--workdir", default="flauers_tutorial_workdir", help="folder for the model, state and CSV files")
parser.add_argument("--train-seconds", type=float, default=5.0, help="training time budget of the LeNet stand-in")
args = parser.parse_args()
os.makedirs(args.workdir, exist_ok=True)
os.chdir(args.workdir)  # the tutorial's relative paths (./_fidata, ./results) land in the workdir


def digits_28(train):
    """scikit-learn's digits, upsampled to MNIST's 28x28, as (images [N, 1, 28, 28], labels)."""
    import torch
    from qfault.data import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split()
    x, y = (x_train, y_train) if train else (x_test, y_test)
    return torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False), y


def load_model():
    """The tutorial's pre-trained LeNet: trained once on the digits, then reloaded."""
    import torch
    from qfault.data import train_classifier

    net = LeNet()
    if os.path.exists("best_model.pt"):
        net.load_state_dict(torch.load("best_model.pt"))
    else:
        x, y = digits_28(train=True)
        train_classifier(net, x, y, epochs=8, lr=3e-3, time_limit_s=args.train_seconds)
        torch.save(net.state_dict(), "best_model.pt")
    return net.eval()


# ---------------------------------------------------------------- Introduction to flauers
from qfault.compat import flauers  # was: import flauers

import sys
sys.path.append("src/") # you always want to `append` the src path this repo
from qfault.compat import flauers  # was: import flauers
# we print it just to verify it is working correctly.
print(flauers)

# ------------------------------------------------------------------ Matrix Multiplication
import numpy as np # We need it to intantiate the matrices 🤭

A = np.array([[1,2,3], [4,5,6], [7,8,9], [10, 11, 12]])
B = np.array([[1,2,3,4], [5,6,7,8], [9,10,11,12]])
print("A is\n",A, end="\n\n")
print("B is\n",B)

C = np.matmul(A, B) # equivalent to A@B
print(C)

print(flauers.matmul(A, B))

# ---------------------------------------------------------------------------- Data Types
A_float = A.astype(np.float32)
B_float = B.astype(np.float32)
print(A_float) # just to display it in jupyter

print(B_float)

print(np.matmul(A_float, B_float))

print(flauers.matmul(A_float, B_float))

A_float = A * 0.5
print(A_float)

B_float = B*0.5
print(B_float)

print(A_float @ B_float)

try:  # DEVIATION: the notebook shows this cell's CastingError; the script catches it
    flauers.matmul(A_float, B_float)
except flauers.exceptions.CastingError as error:
    print("CastingError:", error)

hw = flauers.SystolicArray(10, 10, 10, flauers.projection_matrices.output_stationary, in_dtype=np.float32)
print(hw.matmul(A_float, B_float))

# ------------------------------------------------------------------------ Fault Injection
"""
We want a fault on the first element of the array (0, 0) on register 'c' on bit 5. The fault is a stuckat and its polarity is high (1)
"""
f = flauers.fault_models.StuckAt(x=1, y=1, line="c", bit=5, polarity=1)
print(hw.add_fault(f)) # we add the fault 

print(hw.matmul(A_float, B_float))

C_golden = A_float@B_float
C_faulty = hw.matmul(A_float, B_float)
print(C_golden == C_faulty)

hw.clear_all_faults()
print(hw.matmul(A_float, B_float))

C_faulty = hw.matmul(A_float, B_float)
print(np.allclose(C_faulty, C_golden)) # As you can see these are the same

# ---------------------------------------------------------------------------- Convolution
A = np.array([[1,2,3], [4,5,6], [7,8,9]])
K = np.array( [[1, 1], [1, 1]])
C = flauers.convolve(A, K)
print(C)

C = flauers.convolve_with_array(A, K, array=hw)
print(C)

# We need the input shapes to initialize the im2col object
im2col = flauers.lowerings.S_Im2Col( A.shape, K.shape )
A_low = im2col.lower_activation( A ) # we can transform the "activation"
K_low = im2col.lower_kernel( K ) # we can transform the kernel
print("A is:\n", A)
print("Lowered A is:\n", A_low)

print("K is:\n", K)
print("Lowered K is:\n", K_low)

C_low = hw.matmul(A_low, K_low)
C = im2col.lift(C_low)

print("Lowered C is:\n", C_low)
print("C is:\n", C)

# -------------------------------------------------------------------------------- PyTorch
import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- Model Loading
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding="valid")
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding="valid")
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1) # flatten all dimensions except batch
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x

# for now map_location="cpu" is mandatory since flauers is not compatible yet with GPU
model = load_model()  # DEVIATION: was torch.load("best_model", map_location="cpu")
print(model)

# ----------------------------------------------------------------------- Dataset Loading
# DEVIATION: digits upsampled to 28x28 instead of torchvision's MNIST download (400 images:
# the campaign's BatchLoader needs a multiple of its batch size)
images, targets = digits_28(train=False)
mnist_test = torch.utils.data.TensorDataset(images[:400], targets[:400])
dataloader = torch.utils.data.DataLoader(mnist_test, batch_size = 512, shuffle=False, num_workers=0)

# DEVIATION: the matplotlib cell showing nine samples is skipped (no plotting)

# ------------------------------------------------------------------------------ Baseline
tot = 0
correct = 0
device = "cuda" if torch.cuda.is_available() else "cpu"


with torch.no_grad():
    for batch in dataloader:
        imgs, labels = batch
        outputs = model(imgs)

        tot += len(labels)
        correct += (outputs.argmax(1) == labels).sum()

    acc = correct / tot

print(f"model accuracy is {acc.item()*100:.2f}%")

# ----------------------------------------------------------------------- Fault Injection
import qfault.compat.flauers.torch  # was: import flauers.torch

print(model)

compatible_list = flauers.torch.compatible_layers(model)
print(compatible_list)

flauers.torch.replace_layers(model, compatible_list, hardware=hw)
print(model)

# -------------------------------------------------------------- Fault Injection Campaign
# First we instantiate the golden model twice
model = load_model()  # DEVIATION: was torch.load("best_model", map_location="cpu")
systolic_model = load_model()  # DEVIATION: was torch.load("best_model", map_location="cpu")

# We instantiate the hardware
hw = flauers.SystolicArray(
    29, 29, 161, # These values are fitting for the later torch experiments
    flauers.projection_matrices.output_stationary,
    in_dtype = np.dtype(np.float32)
)

# We then subsitute the layers, to simulate the systolic array doing its thing
compatible_layers = flauers.torch.compatible_layers(model)
flauers.torch.replace_layers(systolic_model, compatible_layers, hardware=hw)
print(model)
print(systolic_model)

with torch.no_grad():
    correct = 0
    imgs, labels = batch
    output = systolic_model(imgs)
    correct += (outputs.argmax(1) == labels).sum()
    print(f"Systolic batch accuracy is {correct / output.shape[0] * 100:.2f}%")

# ------------------------------------------------------------------------ Helper classes
import random

class FaultGenerator:
    def __init__(self, hw: flauers.SystolicArray,
                 name: None|str = None, automatic_save: bool = False, save_path: str = './_fidata', 
                 channels: int = 6, bits: int = 32, try_continue: bool = False
                ):
        self.hw = hw
        self.next_seed = 0
        self.channels = channels
        self.bits = bits
        self.possible_elements = list( self.hw.physical_mapping.keys() )

        if name is not None:
            self.name = name
        if automatic_save and name is None:
                raise Exception("You must give it a name to save the file")
        self.save_path = save_path
        self.automatic_save = automatic_save

        self._next_minus_one = True
        
        if try_continue:
            if name is None:
                raise Exception("You must give it a name to hot-reload")
            fn = os.path.join( save_path, f"FaultGenerator_{name}_state.pkl" )
            if not os.path.exists(fn):
                print(f"No old state file {fn} found. Starting from zero.")
            else:
                # print(f"Reloading state from {fn}.")
                self.load_state()

    def current_seed(self):
        return self.next_seed - 1
    
    def starting_point(self):
        return self.next_seed
    
    def statistical_faults(self,
                       error_margin: float = 0.05, 
                       confidence_level: float = 1.96,
                       error_probability: float = 0.5):
        # Population parameters
        n_channels = self.channels
        n_PEs = len(self.possible_elements)
        bits = self.bits
        
        lines = 3 # a, b, c - always
        polarities = 2 # 0 or 1 - always (with stuck-ats at least)

        # Total population
        N = n_channels * n_PEs * lines * bits * polarities

        # Statistical parameters
        e = error_margin
        t = confidence_level
        p = error_probability

        # Date 2009 Formula
        n = N / ( 1 + e**2 *  (N-1)/(t**2 * p * (1-p) ) )

        print(f"N is {N}. We need to inject {n} faults", end= " ")
        n_faults = int(np.ceil(n))
        print(f"which actually are {n_faults}")

        return n_faults

    def get_fault(self):
        random.seed(self.next_seed)
        line = random.choice(["a", "b", "c"])
        channel = random.randrange(0, self.channels)
        x, y = random.choice( self.possible_elements )
        bit = random.randrange(0, self.bits)
        polarity = random.randrange(0, 2)
        
        f = flauers.fault_models.StuckAt(
            line, 
            x = x, y = y,
            bit = bit, polarity = polarity
        )

        self._next_minus_one = True
        
        self.next_seed += 1
        if self.automatic_save:
            self.save_state()
            
        return (f, channel)

    def iteration_done(self):
        self._next_minus_one = False
        if self.automatic_save:
            self.save_state()

    def load_state(self, file_name: None|str = None, file_path: None|str = None):
        """ Check save_state to understand the parameters """
        if file_name is not None and not os.path.exists(file_path):
            raise Exception(f"Directory {file_path} does not exist.")

        if file_path is not None: path = file_path
        else: path = self.save_path

        if file_name is not None: path = os.path.join(path, f"{file_name}")
        elif self.name is not None: path = os.path.join(path, f"FaultGenerator_{self.name}_state.pkl")
        else: raise Exception(f"A name must be given!.")

        print(f"Reloading FaultGenerator {self.name if self.name is not None else ''} from file {path} ...", end=" ")
            
        file = open(path, "rb")
        state_dict = pickle.load(file)

        if "_next_minus_one" in state_dict:
            self._next_minus_one = state_dict["_next_minus_one"]
        else:
            self._next_minus_one = False
        
        self.next_seed = state_dict["next_seed"]
        if self._next_minus_one:
         self.next_seed -= 1

        print(f"Next seed will be {self.next_seed}")

        file.close()

    def save_state(self, file_name:None|str = None, file_path:None|str = None):
        state_dict = {
            "next_seed": self.next_seed,
            "_next_minus_one": self._next_minus_one
        }
        
        # The path is either the given or the default
        path = self.save_path if file_path is None else file_path
        if not os.path.exists(path):
            os.makedirs(path)

        # The name is the given parameter
        if file_name is not None: 
            path = os.path.join(path, f"FaultGenerator_{file_name}_state.pkl")
        # or the name given in the initializer
        elif self.name is not None:
            path = os.path.join(self.save_path, f"FaultGenerator_{self.name}_state.pkl")
        # if no name is provided either ways, there's an error.
        else:
            raise Exception("A name is necessary!")
            
        file = open(path, "wb")
        pickle.dump(state_dict, file)
        file.flush()
        file.close()
        

class BatchLoader:
    def __init__(self, dataset, #: torchvision.datasets.VisionDataset,
                 name: None|str = None, automatic_save: bool = False, save_path: str = './_fidata',  # fault injection data
                 batch_size = 64, try_continue: bool = False
                ):
        
        self.dataset = dataset
        self.hw = hw
        self.len_dataset = len(dataset)
        
        if name is not None:
            self.name = name
            
        self.automatic_save = automatic_save
        if automatic_save and name is None:
                raise Exception("You must give it a name to save the file")
        self.save_path = save_path

        if self.len_dataset % batch_size  != 0:
            raise Exception(f"""Please, select a batch-size multiple of the length of the dataset. 
            You selected {batch_size} The dataset is composed by {self.len_dataset} elements. 
            {self.len_dataset} is not divisible by {batch_size}""")

        self.seed = 0
        self.next_index = 0

        self._batch_size = batch_size
        self._next_minus_one = True
        
        random.seed(self.seed)
        self._order = [i for i in range( self.len_dataset )]
        random.shuffle(self._order)

        if not os.path.exists(self.save_path):
            os.makedirs(self.save_path)

        if try_continue:
            if name is None:
                raise Exception("You must give it a name to hot-reload")
            fn = os.path.join( save_path, f"BatchLoader_{self.name}_state.pkl" )
            if not os.path.exists(fn):
                print(f"No old state file {fn} found. Starting from zero.")
            else:
                # print(f"Reloading state from {fn}.")
                self.load_state()

    def current_index(self):
        if self._next_minus_one:
            return self.next_index - 1
        return self.next_index
        
    def current_seed(self):
        if self.next_index == 0:
            return self.seed - 1
        return self.seed
    
    def set_seed(self, seed):
        self.seed = seed
        self._order = [i for i in range( self.len_dataset )]
        random.seed(self.seed)
        random.shuffle(self._order)
    
    def load_state(self, file_name: None|str = None, file_path: None|str = None):
        """ Check save_state to understand the parameters """
        if file_name is not None and not os.path.exists(file_path):
            raise Exception(f"Directory {file_path} does not exist.")

        if file_path is not None: path = file_path
        else: path = self.save_path

        if file_name is not None: path = os.path.join(path, f"{file_name}")
        elif self.name is not None: path = os.path.join(path, f"BatchLoader_{self.name}_state.pkl")
        else: raise Exception(f"A name must be given!.")

        print(f"Reloading BatchLoader {self.name if self.name is not None else ''} from file {path}...", end=" " )
        
        file = open(path, "rb")
        state_dict = pickle.load(file)
        self.seed = state_dict["seed"]
        if "_next_minus_one" in state_dict:
            self._next_minus_one = state_dict["_next_minus_one"]
        else:
            self._next_minus_one = False
        self.next_index = state_dict["next_index"]
        if self._next_minus_one: 
            self.next_index -= 1
        if self.next_index < 0:
            self.next_index = 0
            self.seed -= 1
        self.batch_size = state_dict["batch_size"]
        self.len_dataset = state_dict["len_dataset"]

        print(f"Next index will be {self.next_index} with seed {self.seed}")
        
        file.close()

    def save_state(self, file_name: None|str = None, file_path: None|str = None):
        """
            Save the state for hot-reloading.
            If the object is initialized with a name, that will be used to save the state.
            Otherwise, file_name is mandatory to save the file. file_path is optional. If not given,
            the default ./_fidata will be used.
            
            Parameters
            ---
            file_name: [Optional] the name given to the state_file. It is mandatory if the object is initialized without a name
            file_path: [Optional] the path in which to save the file. If not given the default ./_fidata is used
        """
        state_dict = {
            "seed": self.seed,
            "next_index": self.next_index,
            "batch_size": self._batch_size,
            "len_dataset": self.len_dataset,
            "_next_minus_one": self._next_minus_one,
        }

        # The path is either the given or the default
        path = self.save_path if file_path is None else file_path
        if not os.path.exists(path):
            os.makedirs(path)

        # The name is the given parameter
        if file_name is not None: 
            path = os.path.join(path, f"BatchLoader_{file_name}_state.pkl")
        # or the name given in the initializer
        elif self.name is not None:
            path = os.path.join(self.save_path, f"BatchLoader_{self.name}_state.pkl")
        # if no name is provided either ways, there's an error.
        else:
            raise Exception("A name is necessary!")
            
        file = open(path, "wb")
        pickle.dump(state_dict, file)
        file.flush()
        file.close()

    def get_batch(self):
        img_shape = self.dataset[0][0].shape
        tot_batches = self.len_dataset / self._batch_size
        if self.next_index >= tot_batches: # let's make a new order
            self.seed += 1
            random.seed(self.seed)
            self._order = [i for i in range(self.len_dataset)]
            random.shuffle(self._order)
            self.next_index = 0

        starting_point = self.next_index * self._batch_size 
        imgs = np.zeros( (self._batch_size, *img_shape), dtype=np.float32)
        labels = np.zeros( self._batch_size, dtype=np.float32)
        for i in range(self._batch_size):
            idx = self._order[ i + starting_point ]
            img, label = self.dataset[ idx ]
            imgs[i, :, :] = img
            labels[i] = label
        self._next_minus_one = True
        self.next_index += 1
        if self.automatic_save:
            self.save_state()
        return ( torch.from_numpy(imgs), torch.from_numpy(labels) )

    def iteration_done(self):
        self._next_minus_one = False
        if self.automatic_save:
            self.save_state()

import os, csv, pickle

class ResultsWriter():
    def __init__(self, file_path, 
                 try_continue = True,
                 fields = [ "fault_seed", "dataset_seed", "dataset_index",
                          "line", "channel", "row", "col", "bit", "polarity", "ftype"],
                ):
        self.file_path = file_path
        self.fields = fields

        newFile = False # This is needed to write the header
        
        # Open the file
        # There are 4 cases:
        #     1. try_continue = False and file exists -> raise exception.
        #     2. try_continue = True and file exists -> then we read the existing file
        #     3. try_continue = False and file not exists -> we make a new file
        #     4. try_continue = True and file not exists -> we create the file
        if os.path.exists(file_path) and not try_continue: # case 1.
            raise Exception(f"File {file_path} exists, but hot-reloading is disabled.")
        if try_continue and os.path.exists(file_path): # case 2.
            if not self._validate_csv(file_path): raise Exception(f"Fields are different!")
            self.file = open(file_path, "a")
        else: # case 3. and 4.
            parent = os.path.dirname(file_path)
            if not os.path.exists(parent):
                os.makedirs(parent)
            self.file = open(file_path, "w")
            newFile = True
            
        self.writer = csv.DictWriter(self.file, fieldnames = fields)
        if newFile:
            print(f"Initializing file {file_path}...", end ="")
            self.writer.writeheader()
            self.file.flush()
            print(f" Header wrote.")

    def write_row(self, data: list|dict, multiple_rows: bool = False):
        if multiple_rows:
            self.writer.writerows(data)
        else:
            self.writer.writerow(data)
        self.file.flush()

    def close():
        self.file.close()
    
    def _validate_csv(self, file_path):
        file = open(file_path, "r")
        csv_file = csv.DictReader(file)
        try:
            row = next(iter(csv_file))
        except StopIteration: # The file exists but it's empty
            return True
            
        read_fields = row.keys()
        file.close()

        for field in self.fields:
            if field not in read_fields:
                print(f"field {field} does not exist in the file.")
                return False
        return True
        

from tqdm.auto import trange

fault_types_names = ["masked", "non-critical", "sdc1"]

class FaultInjectionCampaign:
    def __init__(self, gmodel, fmodel, dataset, hw, channels, bits,
                model_name: str, dataset_name: str, hw_name: str,
                faulty_layers: list, bs_size = 100):
        """
        THE LAYER SUBSTITUTION SHOULD BE ALREADY DONE!
        """
        self.golden_model = gmodel
        self.faulty_model = fmodel
        self.dataset = dataset
        self.hw = hw

        self.faulty_layers = faulty_layers

        name = f"{model_name}.{dataset_name}.{hw_name}"
        self.name = name
        self.batch_loader = BatchLoader( dataset, name=name, batch_size = bs_size,
                                        automatic_save=True, try_continue=True )
        self.fault_generator = FaultGenerator(hw, channels = channels, bits = bits,
                                              name=name, automatic_save=True, try_continue=True )
        self.results_writer = ResultsWriter( f"./results/{name}.csv", try_continue=True )

        self.golden_model.eval()
        self.faulty_model.eval()

    def run_golden_inference(self):
        return self.golden_model(self.dataset)

    def compute_fault_type(self, golden, faulty: np.ndarray):
        gout = golden
        fout = faulty
        
        bs = gout.shape[0]
        gmax, glabel = torch.max(gout, 1)
        fmax, flabel = torch.max(fout, 1)
        logits = np.array( torch.allclose(gout, fout, rtol=0.01) )
    
        # default is sdc1
        fault_types = 2 * np.ones((bs))
        # if the labels are the same, the fault is non-critical    
        fault_types[ glabel == flabel ] = 1
        # if the logits are the same, masked
        fault_types[ np.all(logits, axis=tuple([i for i in range(1, len(logits.shape))]) ) ] = 0
    
        return fault_types

    def run(self):
        
        n_faults = self.fault_generator.statistical_faults()
        if args.faults is not None:  # DEVIATION: --faults caps the campaign
            n_faults = min(n_faults, args.faults)
        start = self.fault_generator.starting_point()
        
        for i in trange(start, n_faults, dynamic_ncols=True, leave=True):
            # batch and fault generation
            batch = self.batch_loader.get_batch()
            fault, channel = self.fault_generator.get_fault()

            # fault instantiation
            for layer in self.faulty_layers:
                layer.clear_faults()
                layer.add_fault(fault, channel)

            # compute the inferences
            img, labels = batch
            with torch.no_grad():
                golden_output = self.golden_model(img)
                faulty_output = self.faulty_model(img)
    
            ftype = self.compute_fault_type(golden_output, faulty_output)

            res = []
            for i in range( len(ftype) ):
                res.append( {
                    "fault_seed": self.fault_generator.current_seed(), 
                    "dataset_seed": self.batch_loader.current_seed(),
                    "dataset_index": self.batch_loader.current_index(),
                    "line": fault.line.name,
                    "channel": channel,
                    "row": fault.x, 
                    "col": fault.y, # respectively row and column
                    "bit": fault.bit,
                    "polarity": fault.polarity,
                    "ftype": int(ftype[i]),
                } )

            self.results_writer.write_row(res, multiple_rows=True)
            self.batch_loader.iteration_done()
            self.fault_generator.iteration_done()

    def done(self):
        f = open(f"tmp.done.{self.name}", "w")
        f.write("DONE!\n")
        f.write(f"{datetime.now()}")
        f.flush()
        f.close()
        print("DONE!")

# ---------------------------------------------------------------- Actual Fault injection
faulty_layers = [
    systolic_model.get_submodule("conv1"),
    systolic_model.get_submodule("conv2"),
]
fault_injection_campaign = FaultInjectionCampaign(
    model, systolic_model, mnist_test, hw, 6, 32, 
                                "lenet", "mnist", "os", faulty_layers, bs_size = 100
)
fault_injection_campaign.run()
